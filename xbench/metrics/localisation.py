"""Localisation against ground-truth regions: boxes, object masks, discriminative-part masks.

All functions take saliency (B, h, w) (upsampled to the region size and min-max scaled
here) and return per-sample values; dataset-level numbers are aggregates of those:
- `pointing_game`: the map's argmax (first on ties) closer than `tolerance` px to a region pixel
  (Zhang et al. 2016), measured in original-image pixels as TorchRay does (strictly closer; `scale`
  gives each image's transformed pixels per original pixel); report the mean over classes of
  per-class hit rates (`class_mean`). The centre baseline points at pixel (H // 2, W // 2).
- A sample whose region is empty (no box left after a centre crop, an empty mask) has no
  localisation score (NaN), rather than a miss.
- `energy_pointing_game` / `mass_accuracy`: share of saliency inside the region (Score-CAM 2020;
  Arras et al. 2022) — the same quantity, named by the region it is usually scored against.
- `rank_accuracy`: share of the top-K pixels (K = region area) inside the region.
- `attribution_localisation`: Kohlbrenner et al. (2020)'s size-weighted inside-total ratio
  mu_w = (R_in / R_tot) x (S_tot / S_in): the share of the map inside the region divided by the share of
  the image the region covers, so a uniform map scores 1 whatever the region's size.
- `top_k_intersection`: share of the k most salient pixels (k = 1000, at most the image) inside the
  region (Theiner et al. 2021).
- `localisation_auc`: the area under the ROC curve of the map's values as a score for "inside the
  region" (Fawcett 2006), ties counted half: 0.5 for a map unrelated to the region, 1 for one whose every
  inside pixel outranks every outside pixel; NaN where the region is empty or the whole image.
- `focus`: Arias-Duart et al. (2022): the image tiled in a 2 x 2 mosaic with another image of its class and
  two of other classes (quadrants shuffled per image), the mosaic explained for the image's class; the share
  of the map in the two quadrants of that class (0.5 for a uniform map, 1 when it marks only them).
- `max_box_accuracy`: Choe et al. CVPR 2020 as their official code (clovaai/wsolevaluation,
  `BoxEvaluator`) computes it: the map becomes uint8(255 s); at each threshold tau in
  arange(0, 1, 0.01) the pixels strictly above int(tau * its maximum) are kept; OpenCV's contours
  of that mask (holes included) give boxes (x, y, x + w, y + h, clipped to W - 1, H - 1); v1 boxes
  the contour of largest `cv2.contourArea`, v2 every contour (best match); a mask without contours
  boxes (0, 0, 0, 0). Ground-truth boxes are truncated to integers, and IoU counts inclusive pixels
  (+1 in widths). A constant map keeps nothing at any threshold, so it localises nothing.
  `summarise_box_hits` turns the per-sample hits into MaxBoxAcc (delta 0.5) and MaxBoxAccV2 (mean
  over delta 0.3, 0.5, 0.7 of the best threshold).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..aggregate import aggregate
from .saliency import descending_order, scoring_maps, with_nan_rows

THRESHOLDS = np.arange(0, 1, 0.01)  # wsolevaluation's cam_curve_interval 0.01, unrounded as there
IOU_DELTAS = (0.3, 0.5, 0.7)


def boxes_to_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, K, 4) xyxy boxes (NaN rows = padding) -> (B, H, W) bool, pixel centres inside a box."""
    h, w = size
    ys = torch.arange(h, device=boxes.device, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=torch.float32)[None, :] + 0.5
    x1, y1, x2, y2 = (boxes[..., i][:, :, None, None] for i in range(4))
    inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)  # rows are y, columns are x
    return (inside & ~torch.isnan(boxes[..., :1])[:, :, :, None]).any(1)


def _region(region: torch.Tensor) -> torch.Tensor:
    if region.dim() != 3:
        raise ValueError(f"region must be a (B, H, W) mask, got shape {tuple(region.shape)}")
    return region.bool()


def pointing_game(saliency: torch.Tensor, region: torch.Tensor, tolerance: float = 15.0,
                  scale: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) 1.0 if the map's maximum is closer than `tolerance` original-image pixels to the region,
    0.0 if not, NaN if the region is empty. `scale` (B, 2): each image's (sy, sx), transformed pixels
    per original pixel (default 1: the image is at its original size)."""
    region = _region(region)
    b, h, w = region.shape
    prepared = scoring_maps(saliency, (h, w))
    point = prepared.maps.flatten(1).argmax(1)
    return with_nan_rows(_near(point // w, point % w, region, tolerance, scale), prepared.nonfinite)


def centre_pointing_game(region: torch.Tensor, tolerance: float = 15.0,
                         scale: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) the pointing game of a map whose maximum is the image centre, pixel (H // 2, W // 2)."""
    region = _region(region)
    b, h, w = region.shape
    row = torch.full((b,), h // 2, device=region.device)
    col = torch.full((b,), w // 2, device=region.device)
    return _near(row, col, region, tolerance, scale)


def _near(row: torch.Tensor, col: torch.Tensor, region: torch.Tensor, tolerance: float,
          scale: torch.Tensor | None) -> torch.Tensor:
    b, h, w = region.shape
    scale = torch.ones(b, 2, device=region.device) if scale is None else scale.to(region.device).float()
    ys = torch.arange(h, device=region.device)[None, :, None]
    xs = torch.arange(w, device=region.device)[None, None, :]
    dy = (ys - row[:, None, None]) / scale[:, 0, None, None]
    dx = (xs - col[:, None, None]) / scale[:, 1, None, None]
    hit = (region & (dy**2 + dx**2 < tolerance**2)).flatten(1).any(1).float()
    return _unscored_if_empty(hit, region)


def _unscored_if_empty(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """NaN for samples whose region is empty: nothing to localise, so neither a hit nor a miss."""
    return torch.where(region.flatten(1).any(1), values.float(), torch.full_like(values.float(), float("nan")))


def mass_accuracy(saliency: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) share of saliency inside the region (0 for an all-zero map, NaN for an empty region)."""
    region = _region(region)
    prepared = scoring_maps(saliency, tuple(region.shape[-2:]))
    total = prepared.maps.flatten(1).sum(1)
    inside = (prepared.maps * region).flatten(1).sum(1)
    share = torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))
    return with_nan_rows(_unscored_if_empty(share, region), prepared.nonfinite)


def box_frame(saliency: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """The (H, W) the boxes are in: `image_size`, else the map's own size, which must then hold them
    (a low-resolution map scored against image-pixel boxes would silently score nothing)."""
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    h, w = saliency.shape[-2:]
    finite = boxes[~torch.isnan(boxes[..., 0])]
    if len(finite) and (float(finite[:, 2].max()) > w + 1 or float(finite[:, 3].max()) > h + 1):
        raise ValueError(f"the boxes reach x={float(finite[:, 2].max()):.0f}, y={float(finite[:, 3].max()):.0f} "
                         f"but the saliency is {h}x{w}: pass image_size=(H, W), the size of the image the boxes "
                         "are in, and the map is upsampled to it")
    return h, w


def energy_pointing_game(saliency: torch.Tensor, region: torch.Tensor,
                         image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B,) share of saliency inside the region; `region` may be boxes (B, K, 4) in the pixels of an
    image of `image_size` (default: the map's size), or a mask (B, H, W) the map is upsampled to."""
    if region.dim() == 3 and region.shape[-1] == 4 and region.is_floating_point():
        region = boxes_to_mask(region, box_frame(saliency, region, image_size))
    return mass_accuracy(saliency, region)


def rank_accuracy(saliency: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) share of the K most salient pixels inside the region, K = region area (NaN if empty)."""
    region = _region(region)
    b, h, w = region.shape
    prepared = scoring_maps(saliency, (h, w))
    order = descending_order(prepared.maps)
    k = region.flatten(1).sum(1)
    hits = torch.gather(region.flatten(1), 1, order)
    within = torch.arange(h * w, device=region.device)[None, :] < k[:, None]
    share = (hits & within).sum(1).float() / k.clamp_min(1).float()
    return with_nan_rows(_unscored_if_empty(share, region), prepared.nonfinite)


def attribution_localisation(saliency: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) (share of the map inside the region) / (share of the image the region covers); NaN if empty."""
    region = _region(region)
    covered = region.flatten(1).float().mean(1)
    return mass_accuracy(saliency, region) / torch.where(covered > 0, covered, torch.ones_like(covered))


def top_k_intersection(saliency: torch.Tensor, region: torch.Tensor, k: int = 1000) -> torch.Tensor:
    """(B,) share of the min(k, H*W) most salient pixels (ties by index) inside the region; NaN if empty."""
    region = _region(region)
    b, h, w = region.shape
    prepared = scoring_maps(saliency, (h, w))
    top = descending_order(prepared.maps)[:, :min(k, h * w)]
    share = torch.gather(region.flatten(1), 1, top).float().mean(1)
    return with_nan_rows(_unscored_if_empty(share, region), prepared.nonfinite)


def localisation_auc(saliency: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) ROC AUC of the map's values for the region's pixels against the others (Mann-Whitney U / (P N),
    ties sharing their average rank); NaN where the region is empty or covers the image."""
    region = _region(region)
    b, h, w = region.shape
    prepared = scoring_maps(saliency, (h, w))
    values, inside = prepared.maps.flatten(1).double(), region.flatten(1)
    sorted_values = values.sort(1).values
    # a value's average rank among ties: the mean of the first and the last rank it takes
    first = torch.searchsorted(sorted_values.contiguous(), values.contiguous(), right=False) + 1
    last = torch.searchsorted(sorted_values.contiguous(), values.contiguous(), right=True)
    ranks = (first + last).double() / 2
    positives = inside.sum(1).double()
    negatives = h * w - positives
    u = (ranks * inside).sum(1) - positives * (positives + 1) / 2
    auc = u / (positives * negatives).clamp_min(1)
    scored = (positives > 0) & (negatives > 0)
    auc = torch.where(scored, auc, torch.full_like(auc, float("nan"))).float()
    return with_nan_rows(auc, prepared.nonfinite)


def _inclusive_iou(boxes: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of integer boxes (N, 4) against ground truths (G, 4), xyxy with inclusive corners
    (a box covers x0..x1), 0 where the union is empty -> (N, G)."""
    x0 = np.maximum(boxes[:, None, 0], gts[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], gts[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], gts[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], gts[None, :, 3])
    inter = np.maximum(0, x1 - x0 + 1) * np.maximum(0, y1 - y0 + 1)
    area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)  # noqa: E731
    union = area(boxes)[:, None] + area(gts)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def contour_boxes(score_image: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Integer boxes (N, 4) of every contour of `score_image` (H, W uint8) above int(threshold * its
    max), and the index of the contour of largest area; ([[0, 0, 0, 0]], 0) when nothing is above.

    Each contour's area and box are cv2.contourArea's shoelace sum and cv2.boundingRect's extent, computed for
    all contours at once: a noisy map has thousands of contours per threshold, and one OpenCV call per contour
    took most of MaxBoxAcc's time."""
    h, w = score_image.shape
    _, mask = cv2.threshold(score_image, int(threshold * score_image.max()), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return np.zeros((1, 4), np.int64), 0
    lengths = np.fromiter(map(len, contours), np.int64, len(contours))
    points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)  # x, y
    starts = np.cumsum(lengths) - lengths
    following = np.arange(len(points)) + 1
    following[starts + lengths - 1] = starts  # each polygon closes on its first point
    x, y = points[:, 0], points[:, 1]
    areas = np.abs(np.add.reduceat(x * y[following] - x[following] * y, starts))  # twice the area, exact
    largest = int(np.argmax(areas))  # the first of equally large contours, as the official code's max()
    boxes = np.stack([np.minimum.reduceat(x, starts), np.minimum.reduceat(y, starts),
                      np.minimum(np.maximum.reduceat(x, starts) + 1, w - 1),
                      np.minimum(np.maximum.reduceat(y, starts) + 1, h - 1)], 1)
    return boxes, largest


def max_box_accuracy(saliency: torch.Tensor, boxes: torch.Tensor,
                     thresholds: np.ndarray = THRESHOLDS, deltas: tuple[float, ...] = IOU_DELTAS,
                     image_size: tuple[int, int] | None = None) -> dict:
    """Per-sample box hits (1.0 / 0.0): 'v1' (B, T) at delta 0.5 (largest contour), 'v2' (B, T, D)
    (any contour); NaN rows for samples without a box or with a non-finite map (not scored).

    boxes (B, K, 4) xyxy in the pixels of an image of `image_size` (default: the map's size), NaN rows
    for padding; the saliency is upsampled to that size and min-max scaled first.
    """
    prepared = scoring_maps(saliency, box_frame(saliency, boxes, image_size))
    maps, nonfinite = prepared.maps.cpu().numpy(), prepared.nonfinite.cpu().numpy()
    gts_all = boxes.detach().cpu().numpy()
    b = maps.shape[0]
    v1 = np.zeros((b, len(thresholds)), np.float32)
    v2 = np.zeros((b, len(thresholds), len(deltas)), np.float32)
    for i in range(b):
        gts = gts_all[i][~np.isnan(gts_all[i][:, 0])]
        if not len(gts) or nonfinite[i]:
            v1[i], v2[i] = np.nan, np.nan
            continue
        gts = gts.astype(np.int64)  # wsolevaluation's resize_bbox truncates with int()
        score_image = (maps[i] * 255).astype(np.uint8)
        for t, tau in enumerate(thresholds):
            found, largest = contour_boxes(score_image, tau)
            iou = _inclusive_iou(found, gts).max(1)
            v1[i, t] = iou[largest] >= 0.5
            v2[i, t] = iou.max() >= np.asarray(deltas)
    return {"v1": torch.from_numpy(v1), "v2": torch.from_numpy(v2)}


def summarise_box_hits(v1: np.ndarray, v2: np.ndarray) -> dict[str, float]:
    """Dataset-level MaxBoxAcc (v1 hits (N, T)) and MaxBoxAccV2 (v2 hits (N, T, D)), in [0, 1]."""
    return {"max_box_acc": aggregate("curve", v1), "max_box_acc_v2": aggregate("curve", v2)}


def class_mean(values: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of per-class means (NaN values ignored)."""
    values, labels = np.asarray(values, float), np.asarray(labels)
    finite = np.isfinite(values)
    return aggregate("class_mean", values[finite], labels[finite])


def mosaics(images: torch.Tensor, partners: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mosaics (B, C, 2H, 2W), tile (B, 4): which tile (0: the image, 1-3: partners (B, 3, C, H, W)) each
    quadrant (top left, top right, bottom left, bottom right) holds), the order drawn from `seed` and each
    image's content."""
    from ..seeds import content_generator

    b, c, h, w = images.shape
    tiles = torch.cat([images[:, None], partners.to(images)], 1)  # (B, 4, C, H, W)
    order = torch.stack([torch.randperm(4, generator=content_generator(image, seed)) for image in images]).to(images.device)
    placed = tiles.gather(1, order.view(b, 4, 1, 1, 1).expand(-1, -1, c, h, w))
    top, bottom = torch.cat([placed[:, 0], placed[:, 1]], -1), torch.cat([placed[:, 2], placed[:, 3]], -1)
    return torch.cat([top, bottom], -2), order


def quadrant_share(maps: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """(B,) share of each (B, 2H, 2W) map's positive mass in the quadrants `chosen` (B, 4) bool marks (Quantus's
    Focus, the same 1e-9 in its denominator)."""
    b, hh, ww = maps.shape
    h, w = hh // 2, ww // 2
    positive = maps.double().clamp(min=0)
    sums = torch.stack([positive[:, :h, :w], positive[:, :h, w:], positive[:, h:, :w], positive[:, h:, w:]], 1)
    sums = sums.flatten(2).sum(-1)  # (B, 4)
    return (sums * chosen).sum(1) / (positive.flatten(1).sum(1) + 1e-9)


def focus(explain, images: torch.Tensor, partners: torch.Tensor, targets: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B,) Focus: each image tiled with `partners` (B, 3, C, H, W), the first of the image's class and the other two
    of two other classes; the mosaic explained for `targets` (B,), the image's class, its map prepared at the
    mosaic's size; the share of the map in the two quadrants of that class (higher is better)."""
    tiled, order = mosaics(images, partners, seed)
    same_class = (order < 2).to(images.device)  # tile 0 is the image, tile 1 its class's partner
    prepared = scoring_maps(explain(tiled, targets), tuple(tiled.shape[-2:]))
    return with_nan_rows(quadrant_share(prepared.maps, same_class).float(), prepared.nonfinite)
