"""The synthetic benchmark's 2-D birds: parts, classes, and a renderer that can intervene on parts.

A bird is a body with a head, beak, wing and tail, at a random position, scale, rotation and
facing, with a random body colour, on a cluttered background (gradient, low-frequency and pixel
noise, distractor shapes that reuse the part colours). A class is a combination of attribute
values of the *attribute parts* (by default beak shape x wing pattern x tail shape, plus a colour
per value unless the preset is shape-only). Classes are chosen as a connected walk in attribute
space, so every class differs from at least one other class in exactly one part: those parts are
the class's *discriminative parts*.

`render(settings, index, table, remove=(), swap=None)` draws image `index`. It can draw the same
scene with parts (head, beak, wing, tail) or distractors removed, or with an attribute part swapped
to another variant: every random draw is made as in the plain rendering, so the pixels outside the
changed part's old and new masks are byte-identical to it. These interventions stay in the data's
distribution, which is what the causal metrics (xbench.metrics.causal) need.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..config import SynthConfig

GENERATOR_VERSION = 1
PART_NAMES = ("body", "head", "beak", "wing", "tail")  # part id = position + 1; 0 is background
PART_ID = {name: i + 1 for i, name in enumerate(PART_NAMES)}
REMOVABLE_PARTS = ("head", "beak", "wing", "tail")  # what an intervention can remove: every part but the body
DISTRACTOR = "distractor_"  # remove=("distractor_0",) removes the first distractor shape drawn
DRAWING_LENGTH = 1.3  # beak tip to tail tip, in drawing units, at part_scale 1.25

VARIANTS = {
    "beak": ("short", "long", "hooked", "thick"),
    "wing": ("solid", "stripes", "spots", "twotone"),
    "tail": ("fan", "forked", "pointed", "round"),
    "head": ("plain", "crest", "cap", "mask"),
}
PALETTE = {  # one colour per variant value; also the colours distractors draw from
    "beak": ((245, 205, 30), (225, 35, 35), (25, 25, 25), (40, 110, 235)),
    "wing": ((30, 165, 60), (150, 50, 195), (245, 125, 20), (240, 240, 240)),
    "tail": ((125, 75, 35), (30, 205, 215), (215, 45, 165), (125, 125, 125)),
    "head": ((250, 250, 120), (240, 95, 95), (90, 60, 150), (20, 90, 60)),
}


@dataclass(frozen=True)
class Difficulty:
    """Knobs of the generator; `PRESETS` names the tested combinations."""

    object_scale: tuple[float, float] = (0.6, 0.9)  # object length / image side
    rotation_deg: float = 15.0
    part_scale: float = 1.25  # size of attribute parts relative to the base drawing
    clutter: tuple[int, int] = (1, 2)  # number of distractor shapes (inclusive range)
    noise: float = 0.03  # std of per-pixel noise, image range [0, 1]
    colour_attributes: bool = True  # attribute values differ in colour as well as shape
    values_per_attribute: int = 4
    attribute_parts: tuple[str, ...] = ("beak", "wing", "tail")


PRESETS = {
    "default": Difficulty(),
    "hard": Difficulty(
        object_scale=(0.35, 0.7), rotation_deg=25.0, part_scale=1.0, clutter=(3, 6), noise=0.08,
        colour_attributes=False,
    ),
    "many": Difficulty(attribute_parts=("beak", "wing", "tail", "head")),  # up to 256 classes
}


@dataclass(frozen=True)
class SynthSettings(SynthConfig):
    """The config's settings with what follows from them: the difficulty preset and image count."""

    @property
    def difficulty(self) -> Difficulty:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown synth preset {self.preset!r}; known presets: {', '.join(PRESETS)}")
        return PRESETS[self.preset]

    @property
    def num_images(self) -> int:
        return self.classes * (self.train_per_class + self.test_per_class)

    def validate(self) -> None:
        d = self.difficulty
        capacity = d.values_per_attribute ** len(d.attribute_parts)
        if not 2 <= self.classes <= capacity:
            raise ValueError(
                f"synth classes must be between 2 and {capacity} for preset {self.preset!r} "
                f"({d.values_per_attribute} values of {len(d.attribute_parts)} parts); got {self.classes}"
            )
        if self.size < 32:
            raise ValueError(f"synth size must be at least 32 px, got {self.size}")
        if self.train_per_class < 0 or self.test_per_class < 0:
            raise ValueError("synth train/test images per class must not be negative")


# ---------------------------------------------------------------------------- classes


def class_table(settings: SynthSettings) -> np.ndarray:
    """(classes, attribute_parts) attribute values: a connected walk of Hamming-1 steps."""
    d = settings.difficulty
    rng = np.random.default_rng([settings.seed, 7919])
    n_parts, values = len(d.attribute_parts), d.values_per_attribute
    combos = np.stack(np.meshgrid(*[np.arange(values)] * n_parts, indexing="ij"), -1).reshape(-1, n_parts)
    chosen = [int(rng.integers(len(combos)))]
    taken = np.zeros(len(combos), bool)
    taken[chosen[0]] = True
    while len(chosen) < settings.classes:
        diff = (combos[:, None, :] != combos[chosen][None, :, :]).sum(-1)  # (combos, chosen)
        frontier = np.flatnonzero(~taken & (diff == 1).any(1))
        pick = int(frontier[rng.integers(len(frontier))])
        chosen.append(pick)
        taken[pick] = True
    return combos[chosen]


def discriminative_parts(table: np.ndarray, attribute_parts: tuple[str, ...]) -> list[list[int]]:
    """For each class, the part ids whose change alone turns it into another class."""
    diff = table[:, None, :] != table[None, :, :]
    single = diff.sum(-1) == 1
    out = []
    for c in range(len(table)):
        parts = {attribute_parts[int(np.flatnonzero(diff[c, o])[0])] for o in np.flatnonzero(single[c])}
        out.append(sorted(PART_ID[p] for p in parts))
    return out


def class_names(table: np.ndarray, attribute_parts: tuple[str, ...]) -> list[str]:
    return [
        f"{c + 1:03d}." + "-".join(f"{p}_{VARIANTS[p][v]}" for p, v in zip(attribute_parts, row))
        for c, row in enumerate(table)
    ]


def minimal_sufficient_part_sets(table: np.ndarray, attribute_parts: tuple[str, ...], label: int) -> list[set[str]]:
    """The smallest sets of attribute parts whose values tell class `label` from every other class of
    `table` (no other class shows all of them), none containing another (FunnyBirds' CSDC ground truth)."""
    row = table[label]
    others = np.delete(table, label, axis=0)
    sufficient = []
    for size in range(1, len(attribute_parts) + 1):
        for combo in itertools.combinations(range(len(attribute_parts)), size):
            idx = list(combo)
            if not (others[:, idx] == row[idx]).all(1).any():
                sufficient.append(frozenset(idx))
    minimal = [s for s in sufficient if not any(t < s for t in sufficient)]
    return [{attribute_parts[i] for i in sorted(s)} for s in minimal]


def contrast_classes(table: np.ndarray, attribute_parts: tuple[str, ...], label: int) -> tuple[int, int] | None:
    """Two classes that each share k = (P - 1) // 2 attribute parts with class `label` (P attribute
    parts), on disjoint sets of parts: the first such pair in class order, or None. FunnyBirds' target
    sensitivity takes classes at distance 3 of its 5 parts (k = 2); the same rule gives distance 3 for
    the `many` preset's 4 parts and distance 2 for the default 3."""
    shared = (table == table[label]).sum(1)
    k = (len(attribute_parts) - 1) // 2
    candidates = [c for c in range(len(table)) if c != label and shared[c] == k]
    for i, first in enumerate(candidates):
        for second in candidates[i + 1:]:
            if not ((table[first] == table[label]) & (table[second] == table[label])).any():
                return first, second
    return None


def shared_parts(table: np.ndarray, attribute_parts: tuple[str, ...], a: int, b: int) -> tuple[str, ...]:
    """The attribute parts on which classes `a` and `b` agree."""
    return tuple(p for p, same in zip(attribute_parts, table[a] == table[b]) if same)


# ---------------------------------------------------------------------------- drawing


def _triangle(u, v, a, b, c):
    """Points (u, v) inside triangle abc (any winding)."""

    def side(p, q):
        return (q[0] - p[0]) * (v - p[1]) - (q[1] - p[1]) * (u - p[0])

    s1, s2, s3 = side(a, b), side(b, c), side(c, a)
    return ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))


def _ellipse(u, v, cu, cv, a, b):
    return ((u - cu) / a) ** 2 + ((v - cv) / b) ** 2 <= 1.0


def _scaled(points, anchor, s):
    return [(anchor[0] + (p[0] - anchor[0]) * s, anchor[1] + (p[1] - anchor[1]) * s) for p in points]


def _triangles(u, v, triangles, anchor, s):
    """Union of triangles, each scaled by s about the anchor where the part joins the body."""
    mask = np.zeros(u.shape, bool)
    for tri in triangles:
        mask |= _triangle(u, v, *_scaled(tri, anchor, s))
    return mask


def _beak(u, v, variant, s):
    anchor = (0.35, -0.08)
    shapes = {
        "short": [[(0.35, -0.125), (0.35, -0.035), (0.48, -0.08)]],
        "long": [[(0.35, -0.105), (0.35, -0.055), (0.58, -0.08)]],
        "hooked": [[(0.35, -0.125), (0.35, -0.04), (0.49, -0.10)], [(0.44, -0.115), (0.50, -0.10), (0.47, -0.02)]],
        "thick": [[(0.33, -0.16), (0.33, 0.0), (0.47, -0.08)]],
    }[variant]
    return _triangles(u, v, shapes, anchor, s)


def _tail(u, v, variant, s):
    anchor = (-0.22, 0.02)
    if variant == "round":
        return _ellipse(u, v, -0.22 - 0.15 * s, 0.02, 0.15 * s, 0.085 * s)
    shapes = {
        "fan": [[(-0.2, 0.02), (-0.5, -0.15), (-0.5, 0.19)]],
        "forked": [[(-0.2, 0.0), (-0.53, -0.13), (-0.45, -0.02)], [(-0.2, 0.04), (-0.53, 0.17), (-0.45, 0.06)]],
        "pointed": [[(-0.2, -0.04), (-0.2, 0.08), (-0.6, 0.02)]],
    }[variant]
    return _triangles(u, v, shapes, anchor, s)


def _head_marking(u, v, variant, s):
    """Optional head attribute (preset `many`): a marking drawn on/above the head."""
    if variant == "plain":
        return np.zeros(u.shape, bool)
    if variant == "crest":
        return _triangle(u, v, (0.2, -0.15), (0.3, -0.17), _scaled([(0.2, -0.32)], (0.25, -0.16), s)[0])
    if variant == "cap":
        return _ellipse(u, v, 0.27, -0.15, 0.09 * s, 0.045 * s)
    return _ellipse(u, v, 0.3, -0.08, 0.06 * s, 0.03 * s)  # mask across the eye


def _wing_texture(u, v, wing, variant, paint, colour, dark):
    """Paint the wing's pattern (its shape is shared; the pattern is the attribute)."""
    paint(wing, colour)
    if variant == "stripes":
        paint(wing & (np.floor((u + 1.0) / 0.055).astype(np.int32) % 2 == 0), dark)
    elif variant == "spots":
        spots = (np.mod(u + 1.0, 0.09) - 0.045) ** 2 + (np.mod(v + 1.0, 0.07) - 0.035) ** 2 <= 0.022**2
        paint(wing & spots, dark)
    elif variant == "twotone":
        paint(wing & (u < -0.07), dark)


def _smooth_field(rng, size, cells, channels):
    """Low-frequency noise: a (cells x cells) random grid, bilinearly upsampled."""
    grid = rng.normal(size=(cells, cells, channels))
    pos = np.linspace(0, cells - 1, size)
    lo = np.minimum(np.floor(pos).astype(int), cells - 2)
    frac = (pos - lo)[:, None]
    interp = np.zeros((size, cells))
    interp[np.arange(size), lo] = 1 - frac[:, 0]
    interp[np.arange(size), lo + 1] = frac[:, 0]
    return (interp @ grid.transpose(2, 0, 1) @ interp.T).transpose(1, 2, 0)


@functools.lru_cache(maxsize=8)
def pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _random_colour(rng):
    return rng.uniform(40, 220, size=3)


def check_interventions(difficulty: Difficulty, remove=(), swap: dict | None = None) -> None:
    """Refuse a `remove` name or `swap` entry `render` cannot draw, naming what it can."""
    for name in remove:
        if name not in REMOVABLE_PARTS and not (name.startswith(DISTRACTOR) and name[len(DISTRACTOR):].isdigit()):
            raise ValueError(f"cannot remove {name!r}: removable are the parts {', '.join(REMOVABLE_PARTS)} and the "
                             f"distractor shapes {DISTRACTOR}0, {DISTRACTOR}1, ...")
    for part, value in (swap or {}).items():
        if part not in difficulty.attribute_parts:
            raise ValueError(f"cannot swap {part!r}: its variant does not define the classes of this preset; "
                             f"swappable parts: {', '.join(difficulty.attribute_parts)}")
        if not (isinstance(value, (int, np.integer)) and 0 <= value < difficulty.values_per_attribute):
            raise ValueError(f"swap value for {part} must be a variant index 0..{difficulty.values_per_attribute - 1} "
                             f"({', '.join(VARIANTS[part][:difficulty.values_per_attribute])}), got {value!r}")


def render(settings: SynthSettings, index: int, table: np.ndarray | None = None, remove: tuple[str, ...] = (),
           swap: dict[str, int] | None = None) -> dict:
    """Render image `index`: {'image': (S,S,3) uint8, 'parts': (S,S) uint8 part ids, 'distractors': (S,S)
    uint8 (0: none, i + 1: the visible pixels of distractor i), 'distractor_count': int, 'label': int}.

    `remove`: parts (head, beak, wing, tail) and distractors (distractor_0, ...) drawn as absent; the
    head goes with its eye and marking. `swap`: attribute part -> variant index, e.g. the value of the
    nearest class. The returned maps are those of the new image; 'label' stays the class the scene was
    drawn for. Every random draw is made as without interventions, so every pixel outside the changed
    part's old and new masks is byte-identical to the plain rendering, and removing what the image
    does not show changes nothing."""
    d = settings.difficulty
    check_interventions(d, remove, swap)
    removed = frozenset(remove)
    table = class_table(settings) if table is None else table
    label = index % settings.classes
    attributes = {**dict(zip(d.attribute_parts, table[label])), **(swap or {})}
    rng = np.random.default_rng([settings.seed, index])
    S = settings.size
    yy, xx = pixel_centres(S)

    # Shapes paint colour slots into `layer`; the RGB image is composed once at the end.
    layer = np.full((S, S), -1, np.int16)
    colours: list = []

    def paint(mask, colour):
        layer[mask] = len(colours)
        colours.append(colour)

    # Background: a gradient between two colours, low-frequency noise, then distractors.
    c0, c1 = _random_colour(rng), _random_colour(rng)
    angle = rng.uniform(0, 2 * np.pi)
    t = ((xx * math.cos(angle) + yy * math.sin(angle)) / S + 1) / 2
    background = (c0 * (1 - t[..., None]) + c1 * t[..., None] + 25.0 * _smooth_field(rng, S, 5, 3)).astype(np.float32)
    palette = [c for part in d.attribute_parts for c in PALETTE[part]]
    distractor_slots = []  # (distractor, its colour slot)
    count = int(rng.integers(d.clutter[0], d.clutter[1] + 1))
    for i in range(count):
        colour = palette[int(rng.integers(len(palette)))]
        cx, cy, r = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(0.06, 0.14) * S
        if rng.random() < 0.5:
            shape = _ellipse(xx, yy, cx, cy, r, r * rng.uniform(0.4, 1.0))
        else:
            pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in rng.uniform(0, 2 * np.pi, 3)]
            shape = _triangle(xx, yy, *pts)
        if f"{DISTRACTOR}{i}" not in removed:
            distractor_slots.append((i, len(colours)))
            paint(shape, colour)

    # Object pose: object-local coordinates (u forward, v down) in drawing units.
    length = rng.uniform(*d.object_scale) * S
    unit = length / DRAWING_LENGTH
    theta = math.radians(rng.uniform(-d.rotation_deg, d.rotation_deg))
    cos, sin = math.cos(theta), math.sin(theta)
    facing = 1.0 if rng.random() < 0.5 else -1.0
    half_w = 0.5 * length * abs(cos) + 0.3 * unit * abs(sin)
    half_h = 0.5 * length * abs(sin) + 0.3 * unit * abs(cos)
    cx = rng.uniform(min(half_w, S / 2), max(S - half_w, S / 2))
    cy = rng.uniform(min(half_h, S / 2), max(S - half_h, S / 2))
    dx, dy = xx - float(cx), yy - float(cy)
    u = (cos * dx + sin * dy) * (facing / unit)
    v = (cos * dy - sin * dx) * (1.0 / unit)

    def colour_of(part):
        value = attributes[part] if d.colour_attributes else int(rng.integers(len(PALETTE[part])))
        return np.asarray(PALETTE[part][value], float) + rng.uniform(-15, 15, size=3)

    parts = np.zeros((S, S), np.uint8)
    s = d.part_scale
    body_colour = _random_colour(rng)
    dark = (20.0, 20.0, 20.0)

    # Colours are drawn whether or not their part is drawn, so removing a part changes no later draw.
    tail = _tail(u, v, VARIANTS["tail"][attributes.get("tail", 0)], s)
    tail_colour = colour_of("tail") if "tail" in attributes else body_colour * 0.8
    if "tail" not in removed:
        paint(tail, tail_colour)
        parts[tail] = PART_ID["tail"]

    body = _ellipse(u, v, -0.02, 0.02, 0.27, 0.16)
    paint(body, body_colour)
    parts[body] = PART_ID["body"]

    wing = _ellipse(u, v, -0.05, 0.0, 0.2 * s**0.5, 0.095 * s**0.5)
    wing_colour = colour_of("wing") if "wing" in attributes else body_colour * 0.7
    if "wing" not in removed:
        _wing_texture(u, v, wing, VARIANTS["wing"][attributes.get("wing", 0)], paint, wing_colour, dark)
        parts[wing] = PART_ID["wing"]

    head = _ellipse(u, v, 0.27, -0.08, 0.11, 0.11)
    marking = _head_marking(u, v, VARIANTS["head"][attributes["head"]], s) if "head" in attributes else None
    marking_colour = colour_of("head") if "head" in attributes else None
    if "head" not in removed:
        paint(head, body_colour * 0.9 + 10)
        parts[head] = PART_ID["head"]
        if marking is not None:
            paint(marking, marking_colour)
            parts[marking] = PART_ID["head"]
        paint(_ellipse(u, v, 0.3, -0.1, 0.022, 0.022), dark)  # the eye, part of the head

    beak = _beak(u, v, VARIANTS["beak"][attributes.get("beak", 0)], s)
    beak_colour = colour_of("beak") if "beak" in attributes else PALETTE["beak"][0]
    if "beak" not in removed:
        paint(beak, beak_colour)
        parts[beak] = PART_ID["beak"]

    painted = layer >= 0
    background[painted] = np.asarray(colours, np.float32)[layer[painted]]
    background += rng.standard_normal(background.shape, dtype=np.float32) * np.float32(d.noise * 255.0)
    distractors = np.zeros((S, S), np.uint8)
    for i, slot in distractor_slots:
        distractors[layer == slot] = i + 1
    return {"image": np.clip(background, 0, 255).astype(np.uint8), "parts": parts, "distractors": distractors,
            "distractor_count": count, "label": label}
