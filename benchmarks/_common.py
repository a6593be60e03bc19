"""What every benchmark script shares: the machine line and writing the recorded table."""

from __future__ import annotations

import datetime
import platform

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
