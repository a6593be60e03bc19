"""Causal ground truth: re-render a synthetic image with parts removed and see what the model used.

Pixel-removal scores (insertion, deletion, ROAD) move images out of the data's distribution and
localisation scores measure plausibility. The synthetic benchmark knows every part and draws a scene
again with a part left out (`datasets.birds.render`), an intervention that stays in distribution. These
are FunnyBirds' protocols (Hesse, Schaub-Meyer & Roth, ICCV 2023; the framework's
`evaluation_protocols.py` and `explainers/explainer_wrapper.py`) on xbench's 2-D birds, per image:

- part importance of an explanation: the prepared map summed inside the part's mask dilated by a 5x5
  max-pool (stride 1, padding 2); a part is *important* at threshold t when its importance exceeds t x
  the map's sum, for the 80 thresholds t in linspace(0.01, 0.50, 80);
- the model's part importance: the drop of the explained class's logit (and probability) when that part
  alone is removed;
- single deletion (SD): 0.5 + 0.5 x Spearman's rho over the parts between the two importances (NaN
  where either is constant over the parts);
- preservation check (PC): removing every part that is not important keeps the prediction; deletion
  check (DC): removing the important parts changes it (the map explains the predicted class);
- controlled synthetic data check (CSDC): on correctly classified images, the largest share of a
  minimal sufficient part set (parts whose variants alone tell the class from every other) that the
  map of the true class finds important;
- distractibility (D): 1 - the share of the irrelevant parts and distractor shapes (removing one moves
  the explained logit by less than 5% of it, or raises it) that the map finds important;
- target sensitivity (TS): for two classes that each share other parts with the image's class, the map
  of each class gives the parts it shares more importance than the other class's map does (1 point
  per class, averaged); images where the model does not behave so (its logits) are not scored;
- background independence (BI, a model property): 1 - the share of distractors whose removal lowers
  the explained logit by 5% of it or more.
PC, DC, CSDC and D are kept per threshold (curves) and per image as their mean over the thresholds.

Differences from FunnyBirds' birds: the parts are head, beak, wing and tail (no eyes or feet; the eye
goes with the head), the background objects are the distractor shapes, and a part can be swapped to
another class's variant as well as removed (`neighbour_swap`). Every intervention of a batch is rendered
once and forwarded once per model (`PartInterventions`), whichever metrics and methods ask for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.birds import (
    DISTRACTOR,
    PART_ID,
    REMOVABLE_PARTS,
    contrast_classes,
    minimal_sufficient_part_sets,
    shared_parts,
)
from .saliency import prepare

THRESHOLDS = np.linspace(0.01, 0.50, 80)
RELEVANCE = 0.05  # a removal matters when it moves the explained logit by this share of it (FunnyBirds)
Intervention = tuple[frozenset, tuple]  # (names removed, sorted (part, variant) swaps)
NOTHING: Intervention = (frozenset(), ())


def removal(*names: str) -> Intervention:
    return frozenset(names), ()


@dataclass(frozen=True)
class SceneSource:
    """How a synthetic dataset re-renders its samples: `intervene(index, remove, swap)` -> the sample dict
    (`ImageDataset.intervened`), and its class table (classes, attribute parts) of variant indices."""

    intervene: Callable[..., dict]
    table: np.ndarray
    attribute_parts: tuple[str, ...]


class SceneBatch:
    """One batch's scenes: each image's part and distractor masks and its re-rendered interventions
    (rendered once, shared by every model). `index`: each row's sample index; `labels`: the data classes."""

    def __init__(self, source: SceneSource, index: Sequence[int], labels: torch.Tensor, device: torch.device):
        self.source, self.index, self.device = source, list(index), device
        self.labels = labels.cpu()
        plain = [source.intervene(i) for i in self.index]
        self.part_masks = torch.stack([torch.stack([s["part_mask"] == PART_ID[p] for p in REMOVABLE_PARTS])
                                       for s in plain]).to(device)  # (B, P, H, W)
        self.distractor_count = torch.tensor([s["distractor_count"] for s in plain])
        most = int(self.distractor_count.max()) if len(plain) else 0
        self.distractor_masks = torch.stack([torch.stack([s["distractors"] == i + 1 for i in range(most)])
                                             if most else s["distractors"].new_zeros((0, *s["distractors"].shape),
                                                                                     dtype=torch.bool)
                                             for s in plain]).to(device)  # (B, D, H, W)
        self._images: dict[tuple[int, Intervention], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.index)

    def image(self, row: int, intervention: Intervention) -> torch.Tensor:
        key = (row, intervention)
        if key not in self._images:
            names, swaps = intervention
            sample = self.source.intervene(self.index[row], tuple(sorted(names)), dict(swaps) or None)
            self._images[key] = sample["image"]
        return self._images[key]


class PartInterventions:
    """One model's logits on a batch's interventions, each forwarded once (`chunk` images at a time) and
    shared by every method and metric of the model. `logits` (B, C) are those of the unchanged images;
    `to_output` maps data classes to the model's outputs (None: the same index)."""

    def __init__(self, scenes: SceneBatch, model: Callable, logits: torch.Tensor, chunk: int,
                 to_output: torch.Tensor | None = None):
        self.scenes, self.model, self.logits, self.chunk = scenes, model, logits.float(), max(1, chunk)
        self.to_output = to_output
        self._logits: dict[tuple[int, Intervention], torch.Tensor] = {}

    @property
    def source(self) -> SceneSource:
        return self.scenes.source

    def output_of(self, data_class: int) -> int:
        return int(self.to_output[data_class]) if self.to_output is not None else int(data_class)

    @torch.no_grad()
    def after(self, rows: Sequence[int], interventions: Sequence[Intervention]) -> torch.Tensor:
        """(N, C) logits of row rows[i] re-rendered with interventions[i]."""
        keys = list(zip(rows, interventions))
        todo = list(dict.fromkeys(k for k in keys if k not in self._logits and k[1] != NOTHING))
        for start in range(0, len(todo), self.chunk):
            part = todo[start:start + self.chunk]
            images = torch.stack([self.scenes.image(r, i) for r, i in part]).to(self.logits.device)
            for key, value in zip(part, self.model(images).float()):
                self._logits[key] = value
        if not keys:
            return self.logits.new_zeros((0, self.logits.shape[1]))
        return torch.stack([self.logits[r] if i == NOTHING else self._logits[(r, i)] for r, i in keys])


# ---------------------------------------------------------------------------- explanation side


def part_importance(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps, (B, K, H, W) bool masks -> (B, K) float64: each map summed inside each mask
    dilated by a 5x5 max-pool (FunnyBirds' `get_part_importance`)."""
    if masks.shape[1] == 0:
        return maps.new_zeros((len(maps), 0), dtype=torch.float64)
    dilated = F.max_pool2d(masks.double(), 5, stride=1, padding=2)
    return (maps.double()[:, None] * dilated).sum((-2, -1))


def important(importance: torch.Tensor, total: torch.Tensor, thresholds=THRESHOLDS) -> torch.Tensor:
    """(B, K) importances, (B,) map sums -> (B, T, K) bool: importance > t x sum, per threshold t."""
    t = torch.as_tensor(np.asarray(thresholds), dtype=torch.float64, device=importance.device)
    return importance[:, None, :] > total.double()[:, None, None] * t[None, :, None]


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """(B, K) -> (B, K) ranks 1..K along each row, ties sharing their average rank."""
    below = (x[:, None, :] < x[:, :, None]).sum(-1)
    equal = (x[:, None, :] == x[:, :, None]).sum(-1)
    return below.double() + (equal.double() + 1) / 2


def spearman_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, K), (B, K) -> (B,) Spearman's rho per row (scipy's, ties averaged); NaN where a row is constant."""
    rx, ry = average_ranks(x.double()), average_ranks(y.double())
    rx, ry = rx - rx.mean(1, keepdim=True), ry - ry.mean(1, keepdim=True)
    den = (rx.square().sum(1) * ry.square().sum(1)).sqrt()
    return torch.where(den > 0, (rx * ry).sum(1) / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.full_like(den, float("nan")))


def map_total(maps: torch.Tensor) -> torch.Tensor:
    return maps.double().sum((-2, -1))


# ---------------------------------------------------------------------------- protocols


def _alone(inter: PartInterventions, names: Sequence[str], exists: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K, C) logits with each of `names` removed alone; where `exists` (B, K) is False, the unchanged
    image's (nothing to remove, nothing rendered)."""
    b = len(inter.scenes)
    rows = [r for r in range(b) for _ in names]
    asked = [removal(n) if exists is None or bool(exists[r, k]) else NOTHING
             for r in range(b) for k, n in enumerate(names)]
    return inter.after(rows, asked).view(b, len(names), -1)


def _target_logits(after: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, K, C), (B,) -> (B, K): each row's target logit."""
    return after.gather(2, targets.view(-1, 1, 1).expand(-1, after.shape[1], 1))[..., 0]


def single_deletion(inter: PartInterventions, maps: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """SD per image (B,), with the model's part importance (drop of the target's logit and probability
    when each part alone is removed, (B, P)), the map's (its share of the map's sum, (B, P)), and `size`
    (B,): the SD of a map that gives each part its dilated area, which a uniform or per-pixel noise map
    approaches: the score of ranking the parts by size."""
    after = _alone(inter, REMOVABLE_PARTS)
    logit_drop = inter.logits.gather(1, targets[:, None]) - _target_logits(after, targets)
    prob_drop = inter.logits.softmax(-1).gather(1, targets[:, None]) - _target_logits(after.softmax(-1), targets)
    importance = part_importance(maps, inter.scenes.part_masks)
    rho = spearman_rows(logit_drop, importance)
    size = spearman_rows(logit_drop, part_importance(torch.ones_like(maps), inter.scenes.part_masks))
    total = map_total(maps)[:, None]
    share = importance / torch.where(total > 0, total, torch.ones_like(total))
    return {"single_deletion": 0.5 * rho + 0.5, "logit_drop": logit_drop, "prob_drop": prob_drop, "importance": share,
            "size": 0.5 * size + 0.5}


def removal_checks(inter: PartInterventions, maps: torch.Tensor, predictions: torch.Tensor,
                   thresholds=THRESHOLDS) -> dict[str, torch.Tensor]:
    """PC and DC per image and threshold (B, T) in {0, 1}, given maps of the predicted classes."""
    keep = important(part_importance(maps, inter.scenes.part_masks), map_total(maps), thresholds).cpu()
    b, n_t, _ = keep.shape
    rows, asked = [], []
    for r in range(b):
        for t in range(n_t):
            kept = {p for p, k in zip(REMOVABLE_PARTS, keep[r, t].tolist()) if k}
            rows += [r, r]
            asked += [removal(*(set(REMOVABLE_PARTS) - kept)), removal(*kept)]
    top = inter.after(rows, asked).argmax(1).view(b, n_t, 2)
    same = top == predictions.view(-1, 1, 1)
    return {"preservation_check": same[..., 0].double(), "deletion_check": (~same[..., 1]).double()}


def controlled_synthetic_data_check(inter: PartInterventions, maps: torch.Tensor, labels: torch.Tensor,
                                    correct: torch.Tensor, thresholds=THRESHOLDS) -> torch.Tensor:
    """CSDC per image and threshold (B, T): max over the true class's minimal sufficient part sets of the
    share of the set the map (of the true class) finds important; NaN rows: misclassified images."""
    source = inter.source
    keep = important(part_importance(maps, inter.scenes.part_masks), map_total(maps), thresholds).cpu()
    out = torch.full(keep.shape[:2], float("nan"), dtype=torch.float64)
    for r in range(len(keep)):
        if not bool(correct[r]):
            continue
        sets = minimal_sufficient_part_sets(source.table, source.attribute_parts, int(labels[r]))
        index = [[REMOVABLE_PARTS.index(p) for p in s] for s in sets]
        shares = torch.stack([keep[r][:, i].double().mean(1) for i in index], 1)  # (T, sets)
        out[r] = shares.max(1).values
    return out


def distractibility(inter: PartInterventions, maps: torch.Tensor, targets: torch.Tensor,
                    thresholds=THRESHOLDS) -> torch.Tensor:
    """D per image and threshold (B, T): 1 - the share of the irrelevant parts and distractors that the map
    finds important; NaN rows: nothing irrelevant."""
    scenes = inter.scenes
    most = scenes.distractor_masks.shape[1]
    names = list(REMOVABLE_PARTS) + [f"{DISTRACTOR}{i}" for i in range(most)]
    exists = torch.cat([torch.ones(len(targets), len(REMOVABLE_PARTS), dtype=torch.bool),
                        torch.arange(most)[None, :] < scenes.distractor_count[:, None]], 1)
    after = _target_logits(_alone(inter, names, exists), targets)
    original = inter.logits.gather(1, targets[:, None])
    exists = exists.to(after.device)
    irrelevant = (((original - after).abs() < (original * RELEVANCE).abs()) | (original < after)) & exists
    masks = torch.cat([scenes.part_masks, scenes.distractor_masks], 1)
    keep = important(part_importance(maps, masks), map_total(maps), thresholds)
    hits = (keep & irrelevant[:, None, :]).sum(-1).double()
    count = irrelevant.sum(-1, keepdim=True).double()
    value = 1 - hits / torch.where(count > 0, count, torch.ones_like(count))
    return torch.where(count > 0, value, torch.full_like(value, float("nan"))).cpu()


def background_independence(inter: PartInterventions, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """BI per image (B,): 1 - relevant / distractors, where a distractor is relevant when removing it lowers
    the explained logit by at least 5% of it; NaN for images without distractors. Also the counts, which
    FunnyBirds pools over the dataset (`relevant`, `distractors`, (B,))."""
    scenes = inter.scenes
    most = scenes.distractor_masks.shape[1]
    names = [f"{DISTRACTOR}{i}" for i in range(most)]
    exists = torch.arange(most)[None, :] < scenes.distractor_count[:, None]
    after = _target_logits(_alone(inter, names, exists), targets).cpu()
    original = inter.logits.gather(1, targets[:, None]).cpu()
    relevant = (((original - after).abs() >= (original * RELEVANCE).abs()) & (original > after) & exists).sum(1)
    count = scenes.distractor_count
    value = 1 - relevant.double() / count.clamp(min=1).double()
    return {"background_independence": torch.where(count > 0, value, torch.full_like(value, float("nan"))),
            "relevant": relevant, "distractors": count}


def target_sensitivity(inter: PartInterventions, images: torch.Tensor, labels: torch.Tensor,
                       explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """TS per image (B,) in {0, 0.5, 1}; NaN where the class has no two contrast classes or the model's
    logits do not drop more for a class when the parts it shares are removed."""
    source, b = inter.source, len(labels)
    pairs = [contrast_classes(source.table, source.attribute_parts, int(c)) for c in labels]
    rows, asked, found = [], [], []
    for r, pair in enumerate(pairs):
        if pair is None:
            continue
        shares = [shared_parts(source.table, source.attribute_parts, int(labels[r]), c) for c in pair]
        rows += [r, r]
        asked += [removal(*shares[0]), removal(*shares[1])]
        found.append((r, [inter.output_of(c) for c in pair], shares))
    out = torch.full((b,), float("nan"), dtype=torch.float64)
    if not found:
        return out
    after = inter.after(rows, asked).view(len(found), 2, -1)  # [without class 1's shared parts, without class 2's]
    valid = []
    for k, (r, (o1, o2), shares) in enumerate(found):
        base = inter.logits[r]
        drop_1_by_1, drop_1_by_2 = after[k, 0, o1] - base[o1], after[k, 1, o1] - base[o1]
        drop_2_by_1, drop_2_by_2 = after[k, 0, o2] - base[o2], after[k, 1, o2] - base[o2]
        if bool(drop_1_by_1 < drop_1_by_2) and bool(drop_2_by_2 < drop_2_by_1):
            valid.append((r, o1, o2, shares))
    if not valid:
        return out
    rows = torch.tensor([v[0] for v in valid], device=images.device)
    h, w = images.shape[-2:]
    first = prepare(explain(images[rows], torch.tensor([v[1] for v in valid], device=images.device)), (h, w)).maps
    second = prepare(explain(images[rows], torch.tensor([v[2] for v in valid], device=images.device)), (h, w)).maps
    masks = inter.scenes.part_masks[rows]
    by_first, by_second = part_importance(first, masks).cpu(), part_importance(second, masks).cpu()
    for k, (r, _, _, shares) in enumerate(valid):
        own = [[REMOVABLE_PARTS.index(p) for p in s] for s in shares]
        hit_first = float(by_first[k, own[0]].sum() > by_second[k, own[0]].sum())
        hit_second = float(by_first[k, own[1]].sum() < by_second[k, own[1]].sum())
        out[r] = (hit_first + hit_second) / 2
    return out


def neighbour_swap(inter: PartInterventions, labels: torch.Tensor) -> torch.Tensor:
    """Per image (B,): the share of the class's neighbours (classes differing in one attribute part) that
    the model predicts once that part is swapped to the neighbour's variant; NaN without neighbours.
    A model property: whether it reads the parts that define the classes."""
    source = inter.source
    rows, asked, wanted = [], [], []
    for r, c in enumerate(labels.tolist()):
        for other in range(len(source.table)):
            differ = np.flatnonzero(source.table[other] != source.table[c])
            if len(differ) == 1:
                part = source.attribute_parts[int(differ[0])]
                rows.append(r)
                asked.append((frozenset(), ((part, int(source.table[other][differ[0]])),)))
                wanted.append(inter.output_of(other))
    out = torch.full((len(labels),), float("nan"), dtype=torch.float64)
    if rows:
        hit = (inter.after(rows, asked).argmax(1).cpu() == torch.tensor(wanted)).double()
        sums = torch.zeros(len(labels), dtype=torch.float64).index_add_(0, torch.tensor(rows), hit)
        counts = torch.zeros(len(labels), dtype=torch.float64).index_add_(0, torch.tensor(rows), torch.ones_like(hit))
        out = torch.where(counts > 0, sums / counts.clamp(min=1), out)
    return out
