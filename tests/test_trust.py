"""Training and installs a researcher can trust: validation split, seeding, data generation, resume,
provenance, recipes and CLI errors."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import xbench
from xbench.checkpoints import load_checkpoint
from xbench.cli import app
from xbench.config import Config, ConfigError, DatasetConfig, SynthConfig, load_config
from xbench.datasets import build_dataset, training_data
from xbench.datasets.synth import SynthSettings, ensure_generated, generate
from xbench.quickstart import load_quickstart
from xbench.train.trainer import RunExistsError, train

from .conftest import CNN, data_overrides

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    settings = SynthSettings(classes=3, size=40, train_per_class=12, test_per_class=3, seed=5)
    root = generate(tmp_path_factory.mktemp("trust") / "data", settings, progress=False)
    return data_overrides(root, settings)


def _paths(dataset) -> set[str]:
    return {str(r.path) for r in dataset.records}


# ---------------------------------------------------------------------------- validation split


def test_best_checkpoint_is_chosen_on_a_hold_out_of_train_never_on_test(data):
    cfg = load_config([], data)
    split = training_data(cfg.dataset, cfg.seed)
    test = build_dataset(cfg.dataset, "test")
    assert len(split.val) == 4 and len(split.train) == 32  # 10% of 36, stratified
    assert not _paths(split.val) & _paths(split.train) and not _paths(split.val) & _paths(test)
    assert sorted(r.label for r in split.val.records).count(0) >= 1  # every class is in it
    again = training_data(cfg.dataset, cfg.seed)
    assert _paths(again.val) == _paths(split.val) and "hold-out of 4 train images" in split.source
    assert _paths(training_data(cfg.dataset, cfg.seed + 1).val) != _paths(split.val)  # drawn from the seed


def test_the_folder_layout_validates_on_its_val_folder(tmp_path):
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        for cls in ("a", "b"):
            (tmp_path / "pets" / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (32, 32)).save(tmp_path / "pets" / split / cls / f"{i}.png")
    cfg = load_config([], ["dataset.name=pets", "dataset.format=folder", f"dataset.root={tmp_path}"])
    assert cfg.dataset.val_split == "val"
    split = training_data(cfg.dataset, cfg.seed)
    assert (len(split.train), len(split.val)) == (6, 4) and "the val split" in split.source


# ---------------------------------------------------------------------------- seeding


def test_augmentation_follows_the_sample_and_the_epoch_not_the_worker(data):
    cfg = load_config([], data + ["dataset.train_transform=crop"])
    dataset = training_data(cfg.dataset, cfg.seed).train
    a, b = dataset[(7, 3)]["image"], dataset[(7, 3)]["image"]
    assert torch.equal(a, b)  # the same stream and sample: the same crop
    assert not torch.equal(a, dataset[(8, 3)]["image"])  # another epoch's stream: another crop


def test_results_do_not_depend_on_workers_and_a_stopped_run_resumes_exactly(data, tmp_path):
    common = data + CNN + ["dataset.train_transform=crop", "dataset.cache_images=false", "model.drop_rate=0.3",
                           "train.epochs=2", "train.batch_size=8", "train.lr=0.01"]

    def weights(summary):
        return load_checkpoint(f"{summary['run_dir']}/last.pt")["model"]

    zero = weights(train(load_config([], common + [f"output_dir={tmp_path}/w0"]), progress=False))
    two = weights(train(load_config([], common + [f"output_dir={tmp_path}/w2", "dataset.num_workers=2"]),
                        progress=False))
    stopped = train(load_config([], common + [f"output_dir={tmp_path}/r2", "dataset.num_workers=2",
                                              "train.max_steps=5"]), progress=False)
    assert not stopped["finished"] and stopped["steps"] == 5  # mid-epoch 2 of 4 steps each
    resumed = weights(train(load_config([], common + [f"output_dir={tmp_path}/r2", "dataset.num_workers=2"]),
                            resume=True, progress=False))
    for key, value in zero.items():
        assert torch.equal(value, two[key]), key
        assert torch.equal(value, resumed[key]), key


def test_intr_is_built_from_the_runs_seed(data, tmp_path):
    tiny = ["model.name=intr", "model.backbone=resnet18", "model.channels=[16,32,64,128]", "model.output_stride=16",
            "model.hidden_dim=32", "model.nheads=4", "model.enc_layers=1", "model.dec_layers=1",
            "model.dim_feedforward=32", "train.epochs=1", "train.max_steps=1"]
    one = train(load_config([], data + tiny + ["seed=1", f"output_dir={tmp_path}/a"]), progress=False)
    two = train(load_config([], data + tiny + ["seed=2", f"output_dir={tmp_path}/b"]), progress=False)
    first, second = (load_checkpoint(f"{s['run_dir']}/last.pt") for s in (one, two))
    assert first["model_options"]["seed"] == 1 and second["model_options"]["seed"] == 2
    assert not torch.equal(first["model"]["query_embed.weight"], second["model"]["query_embed.weight"])


# ---------------------------------------------------------------------------- data generation


def _generate(root: str, queue) -> None:
    try:
        cfg = DatasetConfig(name="synth", format="synth", root=root,
                            synth=SynthConfig(classes=3, size=40, train_per_class=4, test_per_class=2, seed=1))
        ensure_generated(cfg, workers=1, progress=False)
        queue.put("ok")
    except Exception as exc:  # reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_concurrent_ranks_generate_the_data_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_generate, args=(str(tmp_path / "shared"), queue)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert sorted(queue.get(timeout=5) for _ in procs) == ["ok", "ok", "ok"]
    assert len((tmp_path / "shared" / "images.txt").read_text().splitlines()) == 18


def test_train_reads_a_tree_made_by_data_synth(tmp_path):
    out = tmp_path / "tree"
    made = runner.invoke(app, ["data", "synth", "--out", str(out), "--classes", "3", "--size", "40",
                               "--train-per-class", "4", "--test-per-class", "2", "--workers", "1"])
    assert made.exit_code == 0, made.output
    cfg = load_config([], ["dataset.name=synth", f"dataset.root={out}", "dataset.image_size=40"])
    assert build_dataset(cfg.dataset, "train").num_classes == 3  # the tree's own settings
    clash = load_config([], ["dataset.name=synth", f"dataset.root={out}", "dataset.synth.classes=5"])
    with pytest.raises(ValueError, match=r"holds a synthetic benchmark with other settings \(classes 3 there, 5 "
                                         r"asked for, .*\); leave dataset.synth unset") as err:
        build_dataset(clash.dataset, "train")
    assert "--out" not in str(err.value) and "--overwrite" not in str(err.value)


# ---------------------------------------------------------------------------- resume


def test_resume_needs_a_run_and_the_same_schedule(data, tmp_path):
    common = data + CNN + ["train.epochs=2", "train.batch_size=8", f"output_dir={tmp_path}"]
    with pytest.raises(FileNotFoundError, match="--resume: .* holds no last.pt to continue"):
        train(load_config([], common), resume=True, progress=False)
    train(load_config([], common + ["train.max_steps=2"]), progress=False)
    with pytest.raises(ValueError, match=r"other settings \(train.lr: 0.001 -> 0.01\).*--allow-changes"):
        train(load_config([], common + ["train.lr=0.01"]), resume=True, progress=False)
    summary = train(load_config([], common + ["train.lr=0.01"]), resume=True, allow_changes=True, progress=False)
    assert summary["finished"] and summary["resumed_with_changes"][0]["changed"] == ["train.lr: 0.001 -> 0.01"]


def test_settings_are_checked_before_the_run_directory(data, tmp_path):
    common = data + CNN + ["train.epochs=1", "train.max_steps=1", f"output_dir={tmp_path}"]
    train(load_config([], common), progress=False)
    with pytest.raises(RunExistsError):
        train(load_config([], common), progress=False)
    with pytest.raises(ConfigError, match="model.drop_rate must be a number"):
        train(load_config([], common + ["model.drop_rate=lots"]), progress=False)
    with pytest.raises(ValueError, match="train.optimizer must be adamw or sgd"):
        train(load_config([], common + ["train.optimizer=lion"]), progress=False)


@pytest.mark.slow
def test_ctrl_c_in_training_saves_and_exits_non_zero(data, tmp_path):
    args = [sys.executable, "-m", "xbench.cli", "train", "--method", "cnn", "--no-progress"]
    for item in data + CNN + ["train.epochs=200", "train.batch_size=4", f"output_dir={tmp_path}"]:
        args += ["--set", item]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = tmp_path / "synth" / "cnn" / "last.pt"
    end = time.time() + 180
    while not last.exists() and time.time() < end and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert f"saved {tmp_path}/synth/cnn/last.pt" in err and "--resume" in err


def test_ctrl_c_in_evaluation_says_what_is_kept(tiny_run_setup, tmp_path, monkeypatch):
    from xbench.engine.evaluate import Evaluator

    base, overrides = tiny_run_setup
    original, calls = Evaluator._run_shard, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "_run_shard", interrupted)
    sets = [x for item in overrides + ["evaluate.methods=random", "evaluate.shard_size=4"] for x in ("--set", item)]
    result = runner.invoke(app, ["evaluate", "--no-progress", *sets, "--out", str(tmp_path / "run")])
    assert result.exit_code == 130
    assert "1 of 3 shards are kept in" in result.output and "run the same command again to resume" in result.output


# ---------------------------------------------------------------------------- provenance


def test_a_run_records_the_model_that_ran_and_where(data, tmp_path):
    cnn = train(load_config([], data + CNN + ["train.epochs=1", "train.max_steps=1", f"output_dir={tmp_path}"]),
                progress=False)
    stream = train(load_config([], data + ["model.name=ca_stream", f"model.init_from={cnn['run_dir']}/last.pt",
                                           "train.epochs=1", "train.max_steps=1", f"output_dir={tmp_path}"]),
                   progress=False)
    recorded = yaml.safe_load(open(f"{stream['run_dir']}/config.yaml"))["model"]
    assert recorded["backbone"] == "resnet18" and recorded["channels"] == [16, 32, 64, 128]  # not the recipe's resnet50
    sessions = json.loads(open(f"{stream['run_dir']}/provenance.json").read())
    assert sessions[0]["device"] == "cpu" and "torch" in sessions[0]["versions"] and sessions[0]["python"]
    assert sessions[0]["command"] and sessions[0]["date"][:4].isdigit()


def test_best_checkpoint_holds_weights_only(data, tmp_path):
    summary = train(load_config([], data + CNN + ["train.epochs=1", f"output_dir={tmp_path}"]), progress=False)
    best, last = (load_checkpoint(f"{summary['run_dir']}/{n}") for n in ("best.pt", "last.pt"))
    assert "optimizer" not in best and "rng" not in best and "model" in best
    assert "optimizer" in last and "rng" in last


# ---------------------------------------------------------------------------- recipes and CLI


def test_recipes_are_package_data_and_their_absence_is_loud(monkeypatch, tmp_path):
    cfg = load_config([], ["dataset.name=cub"])
    assert (cfg.dataset.image_size, cfg.train.epochs) == (224, 30)
    assert load_config(["paper/intr_cub.yaml"]).train.epochs == 140  # a packaged recipe by name
    monkeypatch.setenv("XBENCH_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="xbench's recipes are missing"):
        load_config([], ["dataset.name=cub"])


def test_numbers_and_model_options_are_parsed_and_checked():
    assert load_config([], ["train.lr=1e-3"]).train.lr == pytest.approx(0.001)
    result = runner.invoke(app, ["train", "--method", "intr", "--set", "model.hidden_dim=wide"])
    assert result.exit_code == 2 and result.output.strip().endswith("model.hidden_dim must be an integer, got 'wide'")


def test_quickstart_settings_win_over_the_stages():
    _, stages = load_quickstart(overrides=["train.epochs=1"])
    assert {name: cfg.train.epochs for name, cfg in stages.items()} == {"cnn": 1, "ca_stream": 1, "intr": 1}


def test_one_line_errors_and_version(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    result = runner.invoke(app, ["explain", "--method", "gradcam", "--image", str(bad), "--checkpoint",
                                 str(base / "runs" / "synth" / "cnn" / "best.pt")])
    assert result.exit_code == 2 and "broken.png: not an image file" in result.output
    sets = [x for item in overrides for x in ("--set", item)]
    result = runner.invoke(app, ["evaluate", *sets, "--methods", "", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2 and "evaluate.methods (--methods) is empty" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"xbench {xbench.__version__}"
    result = runner.invoke(app, ["evaluate", "--no-progress", *sets, "--methods", "random", "--device", "cpu",
                                 "--out", str(tmp_path / "cpu")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cpu" / "provenance.json").read_text())["device"] == "cpu"
    assert Config().dataset.val_split == "holdout"
