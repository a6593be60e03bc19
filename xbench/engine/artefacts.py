"""What figures need from an evaluation, captured while it runs (nothing is recomputed later).

For a fixed, seeded subset of samples: the image (uint8) and its boxes, each model's top-k
classes and probabilities, the per-head attention of models that have it (INTR, ICN) for the
true and top-k classes, and every method's prepared saliency map (float16). Keys of the
stored dict: ``image|<i>``, ``box|<i>``, ``topk|<model>|<i>``, ``heads|<model>|<i>``,
``headclasses|<model>|<i>``, ``saliency|<method>|<i>`` (i = the sample's index in the split).
"""

from __future__ import annotations

import numpy as np
import torch

from ..datasets.transforms import denormalise
from .methods import has_head_maps
from .thumbnails import Thumbnails


class FigureArtefacts:
    """Collects the figure samples' arrays into `self.arrays` (one dict per shard: `take()`), and every
    image's thumbnails into `self.thumbnails` (`thumbnails.Thumbnails`)."""

    def __init__(self, samples: set[int], mean, std, top_k: int):
        self.samples, self.mean, self.std, self.top_k = samples, mean, std, top_k
        self.arrays: dict[str, np.ndarray] = {}
        self.thumbnails = Thumbnails(mean, std)

    @classmethod
    def seeded(cls, indices: list[int], count: int, seed: int, mean, std, top_k: int) -> FigureArtefacts:
        """`count` samples of `indices` drawn from `seed`."""
        rng = np.random.default_rng(seed)
        count = min(count, len(indices))
        chosen = set(rng.choice(indices, size=count, replace=False).tolist()) if count else set()
        return cls(chosen, mean, std, top_k)

    def positions(self, index: list[int]) -> list[int]:
        """Positions in a batch (of split indices `index`) of the samples figures show."""
        return [i for i, idx in enumerate(index) if idx in self.samples]

    def take(self) -> dict[str, np.ndarray]:
        arrays, self.arrays = self.arrays, {}
        return arrays

    def images(self, batch: dict, index: list[int], positions: list[int]) -> None:
        self.thumbnails.images(batch, index)
        for i in positions:
            raw = denormalise(batch["image"][i].float(), self.mean, self.std).clamp(0, 1)
            self.arrays[f"image|{index[i]}"] = (raw.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            if "box" in batch:
                self.arrays[f"box|{index[i]}"] = batch["box"][i].numpy()

    def predictions(self, model_name: str, model, images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor,
                    index: list[int], positions: list[int]) -> None:
        """Top-k of the figure samples, and per-head maps for their true and top-k classes."""
        if not positions:
            return
        top = probs.topk(min(self.top_k, probs.shape[1]), dim=1)
        for i in positions:
            self.arrays[f"topk|{model_name}|{index[i]}"] = np.stack(
                [top.indices[i].cpu().numpy(), top.values[i].cpu().numpy()], 1).astype(np.float32)
        if has_head_maps(model_name):
            sel = torch.tensor(positions, device=probs.device)
            classes = torch.cat([labels[sel, None], top.indices[sel]], 1)
            heads = model.attention_maps(images[sel], classes)
            for j, i in enumerate(positions):
                self.arrays[f"heads|{model_name}|{index[i]}"] = heads[j].cpu().numpy().astype(np.float16)
                self.arrays[f"headclasses|{model_name}|{index[i]}"] = classes[j].cpu().numpy()

    def saliency(self, label: str, maps: torch.Tensor, index: list[int], positions: list[int]) -> None:
        self.thumbnails.saliency(label, maps, index)
        for i in positions:
            self.arrays[f"saliency|{label}|{index[i]}"] = maps[i].cpu().numpy().astype(np.float16)
