"""What every benchmark script shares: the machine line, writing the recorded table, and running code against
another checkout of xbench (the baseline of a before/now comparison)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def recorded_on(device: torch.device) -> str:
    """'Recorded <date> on <GPU name | CPU, n threads> (<arch>), torch <version>'."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return f"Recorded {datetime.date.today()} on {where} ({platform.machine()}), torch {torch.__version__}"


def emit(lines: list[str], out: str | None) -> None:
    """Print the Markdown report and, with `out`, write it there too."""
    report = "\n".join(lines) + "\n"
    print(report)
    if out:
        with open(out, "w") as fh:
            fh.write(report)


def run_in_tree(source: Path, code: str, *args: str):
    """The JSON that `code` prints on its last line, run with `args` in a fresh interpreter that imports xbench from
    the checkout `source`."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True,
                          cwd=source)
    return json.loads(done.stdout.strip().splitlines()[-1])


def commit_of(checkout: Path) -> str:
    """The short commit `checkout` is at ('' when it is not a git checkout)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True,
                          text=True).stdout.strip()
