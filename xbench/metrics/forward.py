"""Large batched forward passes over perturbed images, chunked to a memory budget.

Perturbation methods (insertion/deletion, average drop/gain, RISE) push many perturbed copies
of a batch through the model. `target_probabilities` builds them chunk by chunk, so the cost
approaches that of the forward passes themselves and memory stays bounded.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# CPU: bytes of activations per input byte for a CNN forward pass in inference (a generous
# estimate for ResNets); a pass that also goes backward keeps every activation and its gradient.
# CUDA measures instead with a probe batch.
CPU_ACTIVATION_FACTOR = 40
CPU_BACKWARD_FACTOR = 4
MAX_CHUNK = 512


def as_targets(targets, images: torch.Tensor) -> torch.Tensor:
    """Targets as a (B,) long tensor on the images' device; a length other than B is an error."""
    t = torch.as_tensor(targets, dtype=torch.long, device=images.device).reshape(-1)
    if t.numel() != images.shape[0]:
        raise ValueError(f"targets has {t.numel()} entries for a batch of {images.shape[0]} images; "
                         "give one target class per image")
    return t


def perturbation_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (the forward passes dominate), fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def chunk_size(model: nn.Module, sample: torch.Tensor, budget_mb: float, backward: bool = False) -> int:
    """How many images like `sample` (3, H, W) fit one forward pass (with `backward`: a forward and
    backward pass, as gradient attributions make) within `budget_mb`."""
    budget = budget_mb * 2**20
    if sample.is_cuda:
        probe = 4
        torch.cuda.synchronize(sample.device)
        base = torch.cuda.memory_allocated(sample.device)
        torch.cuda.reset_peak_memory_stats(sample.device)
        batch = sample[None].expand(probe, *sample.shape).contiguous().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            if backward:
                model(batch).float().sum().backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.autocast("cuda", dtype=perturbation_dtype(sample.device)):
                    model(batch)
        per_image = max(1, (torch.cuda.max_memory_allocated(sample.device) - base) / probe)
    else:
        per_image = sample.numel() * sample.element_size() * CPU_ACTIVATION_FACTOR
        per_image *= CPU_BACKWARD_FACTOR if backward else 1
    return int(max(1, min(MAX_CHUNK, budget // per_image)))


@torch.no_grad()
def target_probabilities(model: nn.Module, build: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
                         total: int, chunk: int, top: bool = False):
    """Softmax probability of each item's target class for items 0..total-1, `chunk` at a time.

    `build(start, end)` returns the perturbed images (end-start, 3, H, W) and their targets.
    Returns (total,) float32 on the images' device; with `top`, also (total,) the top class of each.
    """
    out = best = None
    for start in range(0, total, chunk):
        end = min(start + chunk, total)
        images, targets = build(start, end)
        if out is None:
            out = torch.empty(total, device=images.device)
            best = torch.empty(total, dtype=torch.long, device=images.device)
        dtype = perturbation_dtype(images.device)
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(images)
        out[start:end] = logits.float().softmax(-1).gather(1, targets[:, None])[:, 0]
        best[start:end] = logits.argmax(-1)
    if out is None:
        out, best = torch.empty(0), torch.empty(0, dtype=torch.long)
    return (out, best) if top else out
