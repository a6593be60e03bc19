"""Devices and process-group plumbing: the same code runs single-process or under `torchrun`.

`resolve_device` is the one rule every command uses for `--device`. Under torchrun (WORLD_SIZE > 1)
the group is initialised with nccl on CUDA and gloo on CPU; rank r uses cuda:LOCAL_RANK. Validation
shards samples with `ShardSampler`, which never pads, so every sample is counted exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device a command runs on: `device` is cpu, cuda or cuda:N; None means CUDA when torch sees a GPU.
    Without an index, CUDA is cuda:`local_rank` (each torchrun rank its own GPU); an index is honoured in a
    single process and refused under torchrun, where ranks pick their GPUs. Asking for a GPU torch does
    not see is an error that says what it sees."""
    if device is None:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        asked = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if asked.type == "cpu":
        return asked
    if asked.type != "cuda":
        raise ValueError(f"--device {device!r}: xbench runs on cpu or cuda (cuda:N)")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}, but torch sees no CUDA GPU on this machine (use --device cpu)")
    if asked.index is None:
        return torch.device(f"cuda:{local_rank}")
    if world_size > 1:
        raise ValueError(f"--device {device!r} under torchrun: each rank uses cuda:LOCAL_RANK; pass --device cuda "
                         "and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if asked.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}, but torch sees {torch.cuda.device_count()} GPU(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return asked


def init_distributed(device: str | torch.device | None = None) -> Context:
    """Join the torchrun process group if there is one; the device is `resolve_device(device)`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local, world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Context(rank, world, local, dev)


def shutdown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_sum(ctx: Context, values: list[float]) -> list[float]:
    """Sum numbers over ranks (float64, so counts stay exact)."""
    if not ctx.distributed:
        return list(values)
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ... of range(n): disjoint, complete, never padded."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochSampler(torch.utils.data.Sampler):
    """A shuffled order fixed by (seed, epoch), this rank's share of it, from an offset.

    Like DistributedSampler with set_epoch, plus `start` so a run stopped mid-epoch resumes at
    the very next batch. The order is padded (as DistributedSampler does) so ranks step together.
    It yields (stream, index) pairs, stream fixed by (seed, epoch): the dataset seeds each sample's
    augmentation with them, so the draws follow the sample (ranks, which see different samples,
    differ), not the worker process, and a resumed epoch continues the same stream.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = -(-self.n // self.world)
        order += order[: per_rank * self.world - self.n]
        return order[self.rank::self.world]

    def __iter__(self):
        stream = (self.seed * 1_000_003 + self.epoch) % 2**31
        return iter([(stream, index) for index in self._order()[self.start:]])

    def __len__(self) -> int:
        return -(-self.n // self.world) - self.start
