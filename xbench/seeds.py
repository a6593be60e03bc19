"""Seeds drawn from an image's content: random choices made per image (a random map, ROAD's noise,
faithfulness correlation's subsets) never depend on the batch the image arrives in, its position,
the number of workers or a resumed run."""

from __future__ import annotations

import hashlib

import torch


def content_seed(image: torch.Tensor, seed: int) -> int:
    digest = hashlib.sha1(image.detach().float().cpu().numpy().tobytes()).digest()
    return (int.from_bytes(digest[:7], "little") + seed * 1_000_003) % 2**63


def content_generator(image: torch.Tensor, seed: int) -> torch.Generator:
    """A CPU generator seeded by `seed` and the content of `image`."""
    return torch.Generator().manual_seed(content_seed(image, seed))
