"""Where a training run stands (`TrainState`, saved in last.pt and restored by --resume) and the randomness
that makes a resumed run continue exactly: each epoch's seed from (seed, rank, epoch), and every RNG's state
for a run stopped mid-epoch."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch


@dataclass
class EpochTotals:
    """Sums over the current epoch's steps so far (per rank)."""

    loss: float = 0.0  # summed over images
    correct: float = 0.0
    seen: float = 0.0
    seconds: float = 0.0


@dataclass
class TrainState:
    """Where a run stands: everything of it goes into last.pt (`as_checkpoint`) and comes back on --resume."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimisation steps taken
    step_in_epoch: int = 0  # steps of the current epoch (0 at an epoch boundary)
    best_acc1: float = -1.0
    history: list[dict] = field(default_factory=list)  # one row per finished epoch (log.csv)
    totals: EpochTotals = field(default_factory=EpochTotals)
    changes: list[dict] = field(default_factory=list)  # settings changed at each resume with --allow-changes

    def as_checkpoint(self) -> dict:
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainState:
        return cls(epoch=ckpt["epoch"], step=ckpt["step"], step_in_epoch=ckpt["step_in_epoch"],
                   best_acc1=ckpt["best_acc1"], history=list(ckpt["history"]),
                   totals=EpochTotals(**(ckpt["totals"] or {})), changes=list(ckpt.get("changes", [])))


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    return (seed * 1_000_003 + rank * 10_007 + epoch) % 2**31


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's RNG states as plain values (they load under weights_only=True)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
