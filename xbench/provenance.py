"""Where and how a run ran: date, command line, Python and package versions, device, git commit.

Every run directory keeps a `provenance.json` (train: one entry per session, so a resumed run
shows each; evaluate: the session that wrote the store). Ground floor: torch is imported only to
name the device.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .files import atomic_write_json

PACKAGES = ("xbench", "torch", "torchvision", "timm", "grad-cam", "captum", "numpy", "pandas", "scipy")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The commit of the xbench source tree, '+dirty' with uncommitted changes; None outside a checkout."""
    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def provenance(device=None) -> dict:
    """This session: date, command, Python, platform, CPU count, device (and GPU name), commit, versions; with
    torch loaded, its thread count and the CPU kernels it dispatches to (both change floating-point results)."""
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "cwd": os.getcwd(),
            "python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
            "cpus": os.cpu_count(), "device": str(device) if device is not None else None}
    torch = sys.modules.get("torch")  # what decides the order of CPU reductions, where torch is in use
    if torch is not None:
        info.update(torch_threads=torch.get_num_threads(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                    processor=platform.processor() or platform.machine())
    if device is not None and str(device).startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(device)
    info.update(git_commit=git_commit(), versions=versions())
    return info


def record_provenance(path: str | os.PathLike, device=None) -> list[dict]:
    """Append this session to the list in `path` (written atomically); returns the list."""
    import json

    path = Path(path)
    sessions = json.loads(path.read_text()) if path.is_file() else []
    sessions.append(provenance(device))
    atomic_write_json(path, sessions)
    return sessions
