"""A 2-process CPU (gloo) torchrun evaluation gives exactly the single-process rows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from xbench.engine.store import load_results

pytestmark = [pytest.mark.kill, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_evaluation_equals_one_process(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    overrides = overrides + ["evaluate.methods=gradcam,intr,ca_stream,random", "evaluate.shard_size=4"]
    sets = []
    for item in overrides:
        sets += ["--set", item]
    # One thread per process in both runs: thread counts change float reduction order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "xbench.cli", "evaluate", "--out", str(tmp_path / "single"),
                             "--no-progress", *sets], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", "-m", "xbench.cli", "evaluate", "--out",
                          str(tmp_path / "double"), "--no-progress", *sets], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    single = load_results(tmp_path / "single")[0]
    double = load_results(tmp_path / "double")[0]
    assert len(double) == 12 * 4
    key = ["method", "index"]
    pd.testing.assert_frame_equal(double.sort_values(key).reset_index(drop=True),
                                  single.sort_values(key).reset_index(drop=True))
