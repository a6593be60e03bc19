"""Checkpoint files: atomic writes, safe reads, state-dict extraction and checks.

An xbench checkpoint is a dict of tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``::

    {"xbench": {"format": 1, "version": ...}, "model": state_dict, "model_name": "intr",
     "model_options": {...architecture, no init files...}, "num_classes": C, "class_names": [...],
     "normalisation": {"mean": [...], "std": [...]}, "config": {...resolved config...},
     "epoch": int, "optimizer": ..., "scheduler": ..., "rng": ...}

Foreign files (official INTR checkpoints, DETR-R50, timm/torchvision weights) are read with
the same safe loader; the only foreign type allowed is `argparse.Namespace` (INTR's 'args').
Rebuilding a model from a file is `xbench.load_model` (methods/loading.py).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .contracts import RecordsItsOptions, arch_options
from .files import atomic_write

FORMAT_VERSION = 1
# Options that point at files used to initialise a model; a checkpoint's own weights replace
# them, so they are not stored (and a rebuilt model never needs those files).
INIT_OPTIONS = ("init_from", "backbone_weights", "init_backbone_from", "detr_weights", "reinit_head")  # files
SAFE_FOREIGN_GLOBALS = (argparse.Namespace,)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, unsafe, corrupt or of the wrong model."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` atomically (see `atomic_write`). Saved through a file object, so the archive
    inside is not named after the temporary file: the same payload gives the same bytes (and sha256,
    which evaluation stores fingerprint models by)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)

    return atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True (argparse.Namespace allowed); never runs pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with torch.serialization.safe_globals(list(SAFE_FOREIGN_GLOBALS)):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(str(exc))
        module = _pickled_module(detail)
        if module:
            raise CheckpointError(
                f"{path} holds a whole pickled model ({module}), not its weights; xbench reads only tensors. "
                "Export the weights where the model is defined: torch.save(model.state_dict(), 'weights.pth'), "
                "then pass that file (xbench never unpickles code, so only code you trust may re-save this one)"
            ) from None
        if "GLOBAL" in detail:
            raise CheckpointError(
                f"{path} was refused: it asks to import Python objects a checkpoint may not hold ({detail}). "
                "xbench never loads with code execution allowed, only tensors and allow-listed types; "
                "re-save the weights as a plain state dict"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {detail}") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a checkpoint dict or state dict")
    return data


def _unpickler_detail(message: str) -> str:
    """The specific reason in torch's weights-only error, without its generic advice."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(". Please use", 1)[0].strip()
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "Re-running", "(1)",
                   "(2)")
    detail = [ln for ln in lines if not ln.startswith(boilerplate)]
    return detail[0] if detail else lines[0]


def _pickled_module(detail: str) -> str | None:
    """The class named by a refused GLOBAL when it is a network (torch, torchvision, timm), else None."""
    found = re.search(r"GLOBAL ([\w.]+)", detail)
    name = found.group(1) if found else ""
    return name if name.startswith(("torch.nn.", "torchvision.models.", "timm.models.", "__main__.")) else None


def state_dict_of(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint of any common layout, without a 'module.' prefix. `model_sdict`
    is the official CA-Stream trainer's `checkpoint.pth` (beside optim_sdict, mode, epoch, batch, loss)."""
    for key in ("model", "state_dict", "model_state", "model_state_dict", "model_sdict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def guess_family(state: dict[str, torch.Tensor]) -> str:
    """Which model family a state dict looks like: detr, icn, intr, ca_stream, cnn, unknown transformer or unknown."""
    keys = set(state)
    if any(k.startswith("transformer.") for k in keys):
        if "class_embed.weight" in keys or any(k.startswith("bbox_embed.") for k in keys):
            return "detr"
        if any(k.startswith("kan_cls.") for k in keys):
            return "icn"
        if "presence_vector.weight" in keys:
            return "intr"
        return "unknown transformer"
    if "cls_token" in keys and (("base.to_out.1.weight" in keys or "cls_stream.0.to_out.1.weight" in keys)
                                or (any(k.startswith("backbone.") for k in keys)
                                    and any(k.startswith("blocks.") for k in keys))):
        return "ca_stream"  # xbench's layout or the official one
    if any(k.endswith("fc.weight") or k.startswith(("conv1.", "stem.", "features.")) for k in keys):
        return "cnn"
    return "unknown"


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or inf, naming the first bad tensors."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointError(f"{source} has NaN/inf values in {', '.join(bad[:3])}{more}; refusing to use it")


def checkpoint_payload(model: torch.nn.Module, model_name: str, num_classes: int, class_names: list[str],
                       config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The dict `save_checkpoint` writes for a model (plus `extra`: epoch, optimizer, ...)."""
    from .version import __version__

    raw = getattr(model, "module", model)  # unwrap DistributedDataParallel
    options = arch_options(raw) if isinstance(raw, RecordsItsOptions) else dict(config.get("model", {}))
    options.pop("name", None)
    for key in INIT_OPTIONS:
        options.pop(key, None)
    state = raw.state_dict()
    dataset = config.get("dataset") or {}
    normalisation = {k: [float(v) for v in dataset[k]] for k in ("mean", "std") if k in dataset}
    return {"xbench": {"format": FORMAT_VERSION, "version": __version__}, "model": state, "model_name": model_name,
            "model_options": options, "num_classes": num_classes, "class_names": list(class_names),
            "normalisation": normalisation, "config": config, **extra}
