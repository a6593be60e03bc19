"""The trainer: learning, exact resume, DDP under torchrun, optimiser groups and schedules."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

import xbench
from xbench.checkpoints import load_checkpoint
from xbench.config import TrainConfig, load_config
from xbench.datasets.synth import SynthSettings, generate
from xbench.distributed import EpochSampler, ShardSampler
from xbench.train.step import build_optimizer, lr_factor
from xbench.train.trainer import RunExistsError, Trainer, train

from .conftest import CNN, data_overrides


def _history(summary):
    return load_checkpoint(f"{summary['run_dir']}/last.pt")["history"]


def test_cnn_loss_falls_and_accuracy_beats_chance(trained_cnn):
    history = _history(trained_cnn)
    assert trained_cnn["finished"] and len(history) == 8
    assert history[-1]["train_loss"] < 0.75 * history[0]["train_loss"]
    assert trained_cnn["best_acc1"] >= 0.5  # chance is 0.25 (32 validation images)
    run = trained_cnn["run_dir"]
    for name in ("best.pt", "last.pt", "config.yaml", "log.csv", "summary.json"):
        assert os.path.getsize(f"{run}/{name}") > 0
    assert len(open(f"{run}/log.csv").read().strip().splitlines()) == 9
    ckpt = torch.load(f"{run}/best.pt", weights_only=True)  # plain types only
    assert ckpt["class_names"][0].startswith("001.") and ckpt["model_options"]["channels"] == [16, 32, 64, 128]


def test_ca_stream_learns_on_the_frozen_trained_cnn(learnable, trained_cnn):
    cfg = load_config([], learnable + [
        "model.name=ca_stream", f"model.init_from={trained_cnn['run_dir']}/best.pt", "train.epochs=3",
        "train.batch_size=16", "train.optimizer=sgd", "train.lr=0.05", "train.schedule=constant"])
    summary = train(cfg, progress=False)
    history = _history(summary)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert summary["best_acc1"] >= 0.5
    cnn, _ = xbench.load_model(f"{trained_cnn['run_dir']}/best.pt")
    stream, _ = xbench.load_model(f"{summary['run_dir']}/last.pt")
    for key, value in cnn.state_dict().items():  # the backbone, its BN statistics and its head did not move
        assert torch.equal(stream.state_dict()[f"backbone.{key}"], value), key


def test_intr_learns_on_the_trained_cnn_backbone(learnable, trained_cnn):
    cfg = load_config([], learnable + [
        "model.name=intr", f"model.init_backbone_from={trained_cnn['run_dir']}/best.pt", "model.freeze_backbone=true",
        "model.output_stride=16", "model.hidden_dim=64", "model.nheads=4", "model.enc_layers=1", "model.dec_layers=2",
        "model.dim_feedforward=128", "model.dropout=0.0", "train.epochs=4", "train.batch_size=16", "train.lr=0.001",
        "train.schedule=cosine", "train.weight_decay=0.0001"])
    summary = train(cfg, progress=False)
    history = _history(summary)
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert summary["best_acc1"] > 0.4


@pytest.fixture
def small(tmp_path_factory):
    settings = SynthSettings(classes=3, size=40, train_per_class=12, test_per_class=3, seed=5)
    root = generate(tmp_path_factory.mktemp("small") / "data", settings, progress=False)
    return data_overrides(root, settings)


def test_resume_after_a_stop_gives_the_same_final_weights(small, tmp_path):
    common = small + CNN + ["model.drop_rate=0.3", "train.epochs=3", "train.batch_size=8", "train.lr=0.01",
                            "train.warmup_epochs=0.5"]
    whole = train(load_config([], common + [f"output_dir={tmp_path}/whole"]), progress=False)
    stopped = train(load_config([], common + [f"output_dir={tmp_path}/parts", "train.max_steps=7"]), progress=False)
    # 36 train images, 4 held out for validation: 4 steps of 8 per epoch, stopped mid-epoch 2
    assert not stopped["finished"] and stopped["steps"] == 7
    mid = load_checkpoint(f"{stopped['run_dir']}/last.pt")
    assert (mid["epoch"], mid["step_in_epoch"]) == (1, 3)
    with pytest.raises(RunExistsError, match="--resume to continue it or --fresh"):
        train(load_config([], common + [f"output_dir={tmp_path}/parts"]), progress=False)
    resumed = train(load_config([], common + [f"output_dir={tmp_path}/parts"]), resume=True, progress=False)
    assert resumed["finished"] and resumed["steps"] == whole["steps"] == 12
    a = load_checkpoint(f"{whole['run_dir']}/last.pt")
    b = load_checkpoint(f"{resumed['run_dir']}/last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    def untimed(history):
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in history]

    assert untimed(a["history"]) == untimed(b["history"])  # the stopped epoch's metrics are complete too


def test_epoch_sampler_resumes_mid_epoch_and_shards_cover_everything():
    full = EpochSampler(10, seed=1)
    full.set_epoch(3)
    order = list(full)
    later = EpochSampler(10, seed=1)
    later.set_epoch(3, start=4)
    assert list(later) == order[4:] and len(later) == 6
    full.set_epoch(4)
    again = list(full)
    assert again != order and sorted(i for _, i in again) == list(range(10))
    assert len({stream for stream, _ in order}) == 1 and again[0][0] != order[0][0]  # one stream per epoch
    shards = [list(ShardSampler(9, r, 2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(9))


def test_optimizer_groups_exclude_frozen_parameters_and_take_the_backbone_lr():
    model = torch.nn.ModuleDict({"backbone": torch.nn.Linear(2, 2), "head": torch.nn.Linear(2, 2),
                                 "frozen": torch.nn.Linear(2, 2)})
    model["frozen"].requires_grad_(False)
    opt = build_optimizer(model, TrainConfig(lr=0.1, backbone_lr=0.01, optimizer="sgd", nesterov=True))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone"]["lr"] == 0.01 and groups["rest"]["lr"] == 0.1 and groups["rest"]["nesterov"]
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    with pytest.raises(ValueError, match="train.optimizer must be adamw or sgd"):
        build_optimizer(model, TrainConfig(optimizer="lion"))


def test_learning_rate_schedules():
    cosine = lr_factor(TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1, min_lr=0.01), 10, 0.1)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(10) == pytest.approx(1.0) and cosine(55) == pytest.approx(0.55)
    assert cosine(100) == pytest.approx(0.1)  # min_lr / base lr
    step = lr_factor(TrainConfig(epochs=10, schedule="step", step_epochs=[3, 6], gamma=0.5), 4, 1.0)
    assert [step(s) for s in (0, 11, 12, 23, 24)] == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_model_extra_losses_are_added_to_cross_entropy(small, tmp_path):
    cfg = load_config([], small + [
        "model.name=icn", "model.backbone=resnet18", "model.output_stride=16", "model.hidden_dim=32",
        "model.nheads=4", "model.enc_layers=1", "model.dec_layers=1", "model.dim_feedforward=32",
        "model.dropout=0.0", "model.orthogonality_weight=5.0", f"output_dir={tmp_path}"])
    trainer = Trainer(cfg, progress=False)
    trainer._setup()
    with torch.no_grad():
        trainer.model.query_embed.weight[1] = trainer.model.query_embed.weight[0]  # overlap: loss 5 * 2
    batch = next(iter(trainer.loader))
    trainer.model.train()
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(trainer.model(batch["image"]), batch["label"]).item()
    loss, _ = trainer._step(batch)
    assert loss == pytest.approx(ce + 10.0, abs=1e-3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(small, tmp_path):
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
            "-m", "xbench.cli", "train", "--method", "cnn", "--no-progress"]
    for item in small + CNN + ["train.epochs=2", "train.batch_size=8", f"output_dir={tmp_path}"]:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = torch.load(tmp_path / "synth" / "cnn" / "last.pt", weights_only=True)
    # 36 images less 4 held out: 16 per rank, 2 steps of 8 an epoch
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4
    model, _ = xbench.load_model(tmp_path / "synth" / "cnn" / "last.pt")
    cfg = load_config([], small + CNN + [f"output_dir={tmp_path}/check"])
    trainer = Trainer(cfg, progress=False)
    trainer._setup()
    trainer.model.load_state_dict(model.state_dict())
    acc1, _ = trainer.evaluate()  # single process, every validation sample once
    assert ckpt["history"][-1]["val_acc1"] == pytest.approx(acc1, abs=1e-12)


def test_train_state_round_trips_through_a_checkpoint_and_reads_a_fresh_epochs_empty_totals():
    from xbench.train.state import EpochTotals, TrainState

    state = TrainState(epoch=2, step=17, step_in_epoch=3, best_acc1=0.5, history=[{"epoch": 1, "val_acc1": 0.5}],
                       totals=EpochTotals(loss=3.0, correct=2.0, seen=4.0, seconds=1.5),
                       changes=[{"epoch": 1, "step": 9, "changed": ["train.lr: 0.1 -> 0.2"]}])
    assert TrainState.from_checkpoint(state.as_checkpoint()) == state
    before = {**state.as_checkpoint(), "totals": {}}  # last.pt written at an epoch boundary by older versions
    assert TrainState.from_checkpoint(before).totals == EpochTotals()
