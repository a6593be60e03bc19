"""A model's classes by name, and the map from a dataset's classes to the model's outputs.

A model evaluated on data names its classes in the order of its outputs: from its checkpoint
(xbench checkpoints store them), from a list the user gives (one name per line), or, for the
1000 / 11,821 / 21,841 outputs of ImageNet models, from the ImageNet class info timm ships
(WordNet ids and human-readable descriptions). Data classes map to outputs by name: the exact
name, the WordNet id, or any synonym of the description, ignoring case, '_' and '-'. So a
1000-class model can be scored on a folder of a few classes, labels in the model's own order.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
IMAGENET_SIZES = {1000: "imagenet-1k", 11821: "imagenet-12k", 21841: "imagenet-22k", 21843: "imagenet-21k-goog"}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


@dataclass
class ModelClasses:
    """`names` (one per output, human-readable) and `aliases` (the keys each output answers to)."""

    names: list[str]
    aliases: list[set[str]]
    source: str  # where the names come from, for messages and provenance

    @classmethod
    def plain(cls, names: list[str], source: str) -> ModelClasses:
        return cls(list(names), [{_key(n)} for n in names], source)

    @classmethod
    def imagenet(cls, subset: str) -> ModelClasses:
        from timm.data import ImageNetInfo

        info = ImageNetInfo(subset)
        names, aliases = [], []
        for wnid in info.label_names():
            description = info.label_name_to_description(wnid)
            synonyms = [s.strip() for s in description.split(",") if s.strip()]
            names.append(synonyms[0] if synonyms else wnid)
            aliases.append({_key(wnid), _key(description), *(_key(s) for s in synonyms)})
        return cls(names, aliases, f"{subset} (timm's class info)")


def model_classes(count: int, stored: list[str] | None = None, given: list[str] | str | None = None,
                  origin: str = "the model") -> ModelClasses | None:
    """The classes of a model with `count` outputs: `given` (a list, or a text file with one name per
    line), else the `stored` names of its checkpoint, else ImageNet's when `count` is an ImageNet size,
    else None (unknown)."""
    if given is not None:
        names = Path(given).read_text().splitlines() if isinstance(given, str) else list(given)
        names = [n.strip() for n in names if n.strip()]
        if len(names) != count:
            raise ValueError(f"{len(names)} class names given for {origin}, which has {count} outputs")
        return ModelClasses.plain(names, "evaluate.class_names")
    if stored:
        return ModelClasses.plain(list(stored), "its checkpoint")
    if count in IMAGENET_SIZES:
        return ModelClasses.imagenet(IMAGENET_SIZES[count])
    return None


def class_index_map(data_classes: list[str], classes: ModelClasses | None, count: int,
                    origin: str = "the model") -> list[int]:
    """For each data class (in the data's order) the model output it is, matched by name.

    Without model class names the orders must agree: as many data classes as outputs, mapped in order."""
    if classes is None:
        if len(data_classes) != count:
            raise ValueError(
                f"{origin} has {count} outputs and no class names, and the data has {len(data_classes)} classes: "
                f"give evaluate.class_names.<model> (a file with one class name per line, in the order of the "
                f"model's outputs) or evaluate on data with the model's {count} classes")
        log.info("%s: no class names; data classes taken in the order of its %d outputs", origin, count)
        return list(range(count))
    lookup: dict[str, int] = {}
    for index, keys in enumerate(classes.aliases):
        for key in keys:
            lookup.setdefault(key, index)
    mapping, unknown = [], []
    for name in data_classes:
        index = lookup.get(_key(name))
        if index is None:
            unknown.append(name)
        mapping.append(index if index is not None else -1)
    if unknown:
        shown = []
        for name in unknown[:5]:
            close = difflib.get_close_matches(_key(name), list(lookup), n=2)
            shown.append(f"{name!r}" + (f" (close: {', '.join(close)})" if close else ""))
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(f"{len(unknown)} of the data's {len(data_classes)} classes are not among the "
                         f"{len(classes.names)} classes of {origin} (names from {classes.source}): "
                         f"{', '.join(shown)}{more}; name the data's class folders as the model's classes "
                         "(WordNet ids or names for ImageNet models)")
    return mapping
