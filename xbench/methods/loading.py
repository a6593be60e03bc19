"""`load_model(path)`: the one way a model is built from a file, for train, evaluate and explain.

An xbench checkpoint names its model and architecture, so the model is rebuilt and its weights
loaded strictly. A foreign file (an official INTR checkpoint, ...) is read by the converter its
model family registers (`register_model(..., reads_foreign=...)`). Every file is read with
`torch.load(weights_only=True)` (see xbench.checkpoints).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from ..checkpoints import INIT_OPTIONS, CheckpointError, check_finite, guess_family, load_checkpoint, state_dict_of
from ..contracts import arch_options
from ..factory import build_model
from ..registry import MODELS

log = logging.getLogger(__name__)


def load_model(path: str | os.PathLike, *, expect: str | None = None, num_classes: int | None = None,
               class_names: list[str] | None = None, reinit_head: bool = False, options: dict | None = None,
               pinned: set[str] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model a file holds, with its weights, and the file's description of it.

    `expect` refuses another model family; `num_classes` refuses another class count, or with
    `reinit_head` builds the model for `num_classes` and re-initialises the class-dependent weights;
    `class_names` refuses a model trained on other classes. `options` are architecture options: a
    plain weight file (a timm/torchvision state dict for `cnn`) is built with them; a checkpoint that
    records its architecture refuses those of `pinned` (default: all given) that differ from it.
    Returns (model, info): info is the checkpoint dict (model_name, model_options, num_classes,
    class_names, normalisation, config, ...) plus 'format', how the file was read.
    """
    ckpt = load_checkpoint(path)
    options = dict(options or {})
    if "model_name" in ckpt:
        _check_pinned(ckpt, path, options, set(options) if pinned is None else pinned)
        model = _from_xbench(ckpt, path, expect, num_classes, reinit_head)
        ckpt = {**ckpt, "format": "xbench checkpoint"}
    else:
        model, ckpt = _from_foreign(ckpt, path, expect, num_classes, options, reinit_head)
    stored = ckpt.get("class_names")
    if class_names is not None and stored and list(stored) != list(class_names) and not reinit_head:
        raise CheckpointError(f"{path} was trained on other classes (first: {stored[0]!r}, here: {class_names[0]!r})")
    return model, ckpt


def _check_pinned(ckpt: dict, path, options: dict, pinned: set[str]) -> None:
    """Refuse architecture settings that contradict what the checkpoint holds (they would not run)."""
    recorded = ckpt.get("model_options", {})
    clashes = [f"model.{k}={options[k]!r} (the file has {recorded[k]!r})" for k in sorted(pinned)
               if k in options and k in recorded and k not in INIT_OPTIONS and options[k] != recorded[k]]
    if clashes:
        raise CheckpointError(f"{path} is a {ckpt['model_name']} checkpoint whose architecture decides the model; "
                              f"your settings {', '.join(clashes)} would not be used: remove them")


def _from_xbench(ckpt: dict, path, expect: str | None, num_classes: int | None, reinit_head: bool) -> nn.Module:
    name = ckpt["model_name"]
    if expect is not None and name != expect:
        raise CheckpointError(f"{path} holds a {name!r} model, not the {expect!r} model asked for")
    state = state_dict_of(ckpt)
    check_finite(state, str(path))
    options = {k: v for k, v in ckpt.get("model_options", {}).items() if k not in INIT_OPTIONS}
    stored = int(ckpt["num_classes"])
    if num_classes is not None and num_classes != stored and not reinit_head:
        raise CheckpointError(f"{path} was trained for {stored} classes but {num_classes} are asked for; "
                              "use data with the model's classes, or reinit_head=True (xbench train: "
                              "--reinit-head) to start the classifier afresh")
    model = build_model(name, num_classes=num_classes or stored, **options)
    if num_classes is None or num_classes == stored:
        own = model.state_dict()
        missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
        if missing or unexpected:
            raise CheckpointError(f"{path} does not fit xbench's {name} ({len(missing)} weights missing, e.g. "
                                  f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}): written by an "
                                  f"xbench whose {name} differed? Retrain it, or read the original files it came from")
        model.load_state_dict(state, strict=True)
    else:
        load_matching(model, state, source=str(path))
    return model


# Families whose weights are recognisable on their own: a file of one of them is never read as another.
DISTINCT_FAMILIES = ("detr", "intr", "icn", "ca_stream", "unknown transformer")


def _from_foreign(ckpt: dict, path, expect: str | None, num_classes: int | None, options: dict,
                  reinit_head: bool = False) -> tuple[nn.Module, dict]:
    family = guess_family(state_dict_of(ckpt))
    if expect is not None and family in DISTINCT_FAMILIES and family != expect:
        raise CheckpointError(f"{path} holds {describe_family(family)}, not the {expect!r} model asked for")
    family = expect or family
    entry = MODELS.get(family) if family in MODELS else None
    reader = entry.spec.reads_foreign if entry else None
    if reader is None:
        readers = ", ".join(e.name for e in MODELS.entries() if e.spec.reads_foreign is not None) or "none"
        raise CheckpointError(
            f"{path} is not an xbench checkpoint (it looks like {describe_family(family)}); foreign files "
            f"are read for these models: {readers}; DETR weights go in through intr's detr_weights option"
        )
    model = reader(ckpt, str(path), None if reinit_head else num_classes, options)
    if reinit_head and num_classes is not None and num_classes != _class_count(model):
        arch = {k: v for k, v in arch_options(model).items() if k not in INIT_OPTIONS}
        fresh = build_model(family, num_classes=num_classes, **arch)
        load_matching(fresh, model.state_dict(), source=str(path))
        model = fresh
    info = {"model_name": family, "model_options": arch_options(model),
            "num_classes": int(_class_count(model)), "class_names": None, "normalisation": {}, "config": {},
            "format": entry.spec.foreign_format.format(**info_options(model))}
    return model, info


def info_options(model: nn.Module) -> dict:
    """The string architecture options of a model (what format descriptions may name)."""
    return {k: v for k, v in arch_options(model).items() if isinstance(v, str)}


def _class_count(model: nn.Module) -> int:
    count = getattr(model, "num_classes", None)
    if count is None:
        from .backbones import classifier_name

        count = model.get_submodule(classifier_name(model)).out_features
    return int(count)


def describe_family(family: str) -> str:
    """'a cnn state dict', 'an unknown transformer state dict', ... for messages."""
    noun = f"{family} state dict" if family != "unknown" else "state dict of no known family"
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load every tensor whose name and shape match; log and return those left at their init."""
    own = model.state_dict()
    fresh = [k for k in own if k not in state or state[k].shape != own[k].shape]
    model.load_state_dict({k: v for k, v in state.items() if k in own and v.shape == own[k].shape}, strict=False)
    log.info("%s: re-initialised %s", source, ", ".join(fresh) or "nothing")
    return fresh
