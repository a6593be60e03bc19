"""Processes killed with SIGKILL, and two processes on one results directory.

These start real `xbench` processes and kill them mid-work; marked `kill` (they take tens of
seconds) and part of the default run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from xbench.checkpoints import load_checkpoint
from xbench.config import load_config
from xbench.engine.evaluate import evaluate
from xbench.engine.store import ResultStore, load_results

pytestmark = [pytest.mark.kill, pytest.mark.slow]

CNN = ["model.name=cnn", "model.backbone=resnet18", "model.channels=[16,32,64,128]"]
ENV = {**os.environ, "TQDM_DISABLE": "1"}  # OMP_NUM_THREADS: as conftest sets it


def _xbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "xbench.cli", *args]


def _sets(items: list[str]) -> list[str]:
    out = []
    for item in items:
        out += ["--set", item]
    return out


def _wait_for(condition, timeout: float, what: str, proc=None) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            said = proc.stderr.read()[-2000:] if proc.stderr else ""
            raise AssertionError(f"process ended (code {proc.returncode}) before {what}: {said}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _data(tiny_run_setup):
    base, overrides = tiny_run_setup
    return [o for o in overrides if o.startswith("dataset.")]


def test_kill_9_during_training_then_resume_gives_the_uninterrupted_weights(tiny_run_setup, tmp_path):
    data = _data(tiny_run_setup)
    common = data + CNN + ["model.drop_rate=0.2", "train.epochs=6", "train.batch_size=2", "train.lr=0.01",
                           "train.log_tensorboard=false"]
    subprocess.run(_xbench("train", "--method", "cnn", "--no-progress", *_sets(common + [f"output_dir={tmp_path}/a"])),
                   check=True, env=ENV, capture_output=True, timeout=300)
    victim_dir = tmp_path / "b" / "synth" / "cnn"
    proc = subprocess.Popen(_xbench("train", "--method", "cnn", "--no-progress",
                                    *_sets(common + [f"output_dir={tmp_path}/b"])),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = victim_dir / "log.csv"
    _wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, 120, "two epochs", proc)
    _kill(proc)
    stopped_at = load_checkpoint(victim_dir / "last.pt")["epoch"]
    assert 2 <= stopped_at < 6, stopped_at
    resumed = subprocess.run(_xbench("train", "--method", "cnn", "--no-progress", "--resume",
                                     *_sets(common + [f"output_dir={tmp_path}/b"])),
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_checkpoint(tmp_path / "a" / "synth" / "cnn" / "last.pt")
    b = load_checkpoint(victim_dir / "last.pt")
    assert a["epoch"] == b["epoch"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    script = (
        "import sys, torch\n"
        "from xbench.checkpoints import save_checkpoint\n"
        "path = sys.argv[1]\n"
        "save_checkpoint(path, {'version': 0, 'w': torch.zeros(10)})\n"
        "i = 1\n"
        "while True:\n"
        "    save_checkpoint(path, {'version': i, 'w': torch.full((40_000_000,), float(i))})\n"
        "    i += 1\n"
    )
    target = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: target.exists() and list(tmp_path.glob(".last.pt.*.tmp")), 120, "a checkpoint write", proc)
    _kill(proc)
    ckpt = load_checkpoint(target)  # whatever was complete before the kill, never a torn file
    assert ckpt["w"].numel() in (10, 40_000_000)
    assert (ckpt["w"] == ckpt["version"]).all()


def _eval_args(out: Path, overrides: list[str]) -> list[str]:
    return _xbench("evaluate", "--out", str(out), "--no-progress", *_sets(overrides))


def test_kill_9_during_evaluate_then_rerun_gives_the_uninterrupted_rows(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    overrides = overrides + ["evaluate.methods=gradcam,intr,rise", "evaluate.shard_size=2",
                             "evaluate.explainers={rise: {masks: 300}}"]
    reference = load_results(evaluate(load_config([], overrides), out=tmp_path / "ref", progress=False))[0]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_eval_args(out, overrides), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: len(ResultStore(out).done_shards()) >= 1, 180, "a finished shard", proc)
    _kill(proc)
    done = ResultStore(out).done_shards()
    assert 1 <= len(done) < 6
    for shard in done:  # every committed shard is complete and readable
        assert len(pd.read_csv(out / "shards" / f"{shard:05d}.csv")) == 2 * 3
    rerun = subprocess.run(_eval_args(out, overrides), env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "already done; resuming" in rerun.stderr
    rows = load_results(out)[0]
    assert not rows.duplicated(["index", "method"]).any() and len(rows) == len(reference)
    key = ["method", "index"]
    pd.testing.assert_frame_equal(rows.sort_values(key).reset_index(drop=True),
                                  reference.sort_values(key).reset_index(drop=True))
    assert not list((out / "shards").glob(".*.tmp"))  # the rerun cleared the killed run's temporaries


def test_a_second_evaluate_on_the_same_directory_is_refused_or_waits(tiny_run_setup, tmp_path):
    """While a process holds a results directory (this test, as a first evaluate would), a second evaluate is
    refused naming the holder and --wait; with --wait it blocks until the directory is free, then runs."""
    base, overrides = tiny_run_setup
    overrides = overrides + ["evaluate.methods=gradcam,random", "evaluate.shard_size=2"]
    out = tmp_path / "shared"
    with ResultStore(out).lock():
        second = subprocess.run(_eval_args(out, overrides), env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"is in use by pid {os.getpid()}" in second.stderr and "--wait" in second.stderr
        assert not (out / "results.csv").exists()
        log = tmp_path / "waiter.log"
        with open(log, "w") as stderr:
            waiter = subprocess.Popen(_eval_args(out, overrides) + ["--wait"], env=ENV, stdout=subprocess.DEVNULL,
                                      stderr=stderr, text=True)
        _wait_for(lambda: "waiting for it to finish" in log.read_text(), 120, "the waiter to say it waits", waiter)
        assert f"in use by pid {os.getpid()}" in log.read_text()
        time.sleep(0.5)  # still blocked on the lock, and nothing written
        assert waiter.poll() is None and not (out / "results.csv").exists()
    assert waiter.wait(timeout=120) == 0, log.read_text()[-2000:]
    rows = load_results(out)[0]
    assert len(rows) == 12 * 2 and not rows.duplicated(["index", "method"]).any()
