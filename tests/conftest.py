"""Shared fixtures: tiny synthetic data built once per test session."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from filelock import FileLock

import xbench
from xbench.checkpoints import checkpoint_payload, save_checkpoint
from xbench.config import load_config
from xbench.datasets import build_dataset
from xbench.datasets.synth import SynthSettings, generate
from xbench.train.trainer import train

os.environ.setdefault("TQDM_DISABLE", "1")  # keep test logs readable
# Under pytest-xdist the workers share the cores: one thread each, or they would fight over them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))  # the xbench processes tests start, too

PRETRAINED_FIXTURES = {"lite0", "pretrained"}  # the real ImageNet network the reference tests run


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name` as `build(folder)` leaves it, built by the first pytest-xdist worker that asks and read
    by the others (the workers' temporary folders share a parent); without xdist, a folder of this session.
    What is built there is read only: a test that changes it works on a copy."""
    parent = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        parent = parent.parent
    folder = parent / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            (folder / ".built").touch()
    return folder


def pytest_collection_modifyitems(config, items):
    """A test on the pretrained network is slow by definition (the equality tests against Quantus, captum and
    the libraries): `-m "not slow"` leaves them to `make test`."""
    for item in items:
        if PRETRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """A 4-class, 64 px synthetic benchmark: 6 train and 3 test images per class."""
    settings = SynthSettings(classes=4, size=64, train_per_class=6, test_per_class=3, seed=3)
    root = generate(tmp_path_factory.mktemp("synth") / "data", settings, workers=1, progress=False)
    return root, settings


HALF = {"backbone": "resnet18", "channels": [16, 32, 64, 128]}
TINY_INTR = {**HALF, "output_stride": 16, "hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 1,
             "dim_feedforward": 32, "dropout": 0.0, "freeze_backbone": True}
METHODS = "gradcam,intr,ca_stream,gradcam@intr,random,centre"


@pytest.fixture(scope="session")
def tiny_run_setup(tmp_path_factory):
    """A tiny synthetic split and random-weight checkpoints of cnn, ca_stream and intr."""
    base = tmp_path_factory.mktemp("engine")
    settings = SynthSettings(classes=3, size=48, train_per_class=1, test_per_class=4, seed=9)
    root = generate(base / "data", settings, progress=False)
    overrides = ["dataset.name=synth", "dataset.format=synth", f"dataset.root={root}", "dataset.image_size=48",
                 "dataset.synth.classes=3", "dataset.synth.size=48", "dataset.synth.train_per_class=1",
                 "dataset.synth.test_per_class=4", "dataset.synth.seed=9", f"output_dir={base / 'runs'}",
                 f"evaluate.methods={METHODS}", "evaluate.batch_size=4", "evaluate.saliency_samples=5"]
    classes = build_dataset(load_config([], overrides).dataset, "test").classes
    torch.manual_seed(0)
    for name, options in (("cnn", HALF), ("ca_stream", HALF), ("intr", TINY_INTR)):
        model = xbench.build_model(name, num_classes=3, **options)
        payload = checkpoint_payload(model, name, 3, classes, {"model": {"name": name, **options}})
        save_checkpoint(base / "runs" / "synth" / name / "best.pt", payload)
    return base, overrides


@pytest.fixture(scope="session")
def reported_run(tiny_run_setup, tmp_path_factory):
    """One evaluation of five methods (CAM, both ante-hoc models, two baselines) on the tiny data, and its
    full report (tables, every figure, report.html): (run directory, {"report": report.html, "figures": the
    figure files}). Built once for all workers (`built_once`)."""
    from xbench.engine.evaluate import evaluate
    from xbench.report import full_report

    base, overrides = tiny_run_setup

    def build(folder: Path) -> None:
        run = evaluate(load_config([], overrides + ["evaluate.methods=gradcam,intr,ca_stream,random,centre"]),
                       out=folder / "run", progress=False)
        written = full_report(run)
        (folder / "figures.json").write_text(json.dumps([str(p) for p in written["figures"]]))

    folder = built_once(tmp_path_factory, "reported_run", build)
    figures = [Path(p) for p in json.loads((folder / "figures.json").read_text())]
    return folder / "run", {"report": folder / "run" / "report.html", "figures": figures}


@pytest.fixture(scope="session")
def run(reported_run):
    """The directory of `reported_run`'s evaluation."""
    return reported_run[0]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CNN = ["model.name=cnn", "model.backbone=resnet18", "model.channels=[16,32,64,128]"]


def data_overrides(root, settings: SynthSettings) -> list[str]:
    """The config settings that point at a generated synthetic tree."""
    return [
        "dataset.name=synth", "dataset.format=synth", f"dataset.root={root}", f"dataset.image_size={settings.size}",
        f"dataset.synth.classes={settings.classes}", f"dataset.synth.size={settings.size}",
        f"dataset.synth.train_per_class={settings.train_per_class}",
        f"dataset.synth.test_per_class={settings.test_per_class}", f"dataset.synth.seed={settings.seed}",
        f"dataset.synth.preset={settings.preset}", "dataset.cache_images=true", "train.log_tensorboard=false",
    ]


LEARNABLE = SynthSettings(classes=4, size=48, train_per_class=100, test_per_class=8, seed=0)


@pytest.fixture(scope="session")
def learnable(tmp_path_factory):
    """4 classes at 48 px, 100 training images each: enough to beat chance in seconds. The data is generated
    once for all workers; each worker writes its runs to its own output_dir."""
    data = built_once(tmp_path_factory, "learnable", lambda folder: generate(folder / "data", LEARNABLE, workers=2,
                                                                             progress=False))
    return data_overrides(data / "data", LEARNABLE) + [f"output_dir={tmp_path_factory.mktemp('runs')}"]


@pytest.fixture(scope="session")
def trained_cnn(learnable, tmp_path_factory):
    """A cnn trained on `learnable` (8 epochs), once for all workers: its run summary."""

    def build(folder: Path) -> None:
        cfg = load_config([], learnable + CNN + [
            "train.epochs=8", "train.batch_size=16", "train.lr=0.003", "train.warmup_epochs=0",
            "train.weight_decay=0", "train.label_smoothing=0", f"output_dir={folder}"])
        (folder / "summary.json").write_text(json.dumps(train(cfg, progress=False)))

    return json.loads((built_once(tmp_path_factory, "trained_cnn", build) / "summary.json").read_text())
