"""Configuration: dataclass sections, YAML layers and `--set a.b=c` overrides.

Layers, lowest first: the dataclass defaults, ``datasets/<dataset>.yaml`` (by dataset name,
else by dataset.format), ``models/<model>.yaml`` (the model's recipe), each ``--config`` file,
then each ``--set`` override. The recipes are package data (xbench/configs/), so a wheel install
has them; a ``--config`` path that does not exist is looked up among them (``paper/intr_cub.yaml``). Unknown keys raise `ConfigError` naming the key and the valid ones.
The `model` section is open: besides `name` it takes the keyword arguments of the
registered model builder, validated against that builder's signature.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .coercion import ConfigError, build_section, coerce, unknown_key_message

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The colour perturbations put in place of removed pixels (deletion, RISE, blur padding, attribution
# baselines): ImageNet's mean colour in pixel space, which is what the published protocols use (zeros
# after ImageNet normalisation).
SUBSTRATE = IMAGENET_MEAN


def config_dir() -> Path:
    """Where the YAML recipes live: $XBENCH_CONFIG_DIR, else the package's configs/ (package data).

    A missing folder is an error, never a silent fall-back to the dataclass defaults."""
    env = os.environ.get("XBENCH_CONFIG_DIR")
    folder = Path(env) if env else Path(__file__).resolve().parent / "configs"
    if not (folder / "datasets").is_dir() or not (folder / "models").is_dir():
        raise ConfigError(f"xbench's recipes are missing: {folder} has no datasets/ and models/ folders "
                          "(a broken install, or XBENCH_CONFIG_DIR pointing elsewhere); reinstall xbench")
    return folder


def recipe_path(name: str | os.PathLike) -> Path:
    """A --config file: the path itself, else the packaged recipe of that name (paper/intr_cub.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = config_dir() / path
    if packaged.is_file():
        return packaged
    known = sorted(str(p.relative_to(config_dir())) for p in config_dir().rglob("*.yaml"))
    raise ConfigError(f"config file {path} does not exist (nor is it a packaged recipe: {', '.join(known)})")


@dataclass(frozen=True)
class SynthConfig:
    """Generation settings of the synthetic benchmark (used when dataset.format is synth).

    Image i of the benchmark depends only on these settings and i (see datasets/synth.py)."""

    classes: int = 12
    size: int = 96
    train_per_class: int = 200
    test_per_class: int = 40
    seed: int = 0
    preset: str = "default"


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "synth"
    format: str = ""  # loader: cub | folder | imagenet | synth; empty means "same as name"
    root: str = ""  # folder holding the data; for synth, where it is generated
    image_size: int = 96
    train_split: str = "train"
    # Where training picks best.pt: a split of the data's own (the folder layout's "val"), or "holdout":
    # a seeded, class-stratified `val_fraction` of train_split, taken out of training. The test split
    # (eval_split) is touched only by `xbench evaluate`.
    val_split: str = "holdout"
    val_fraction: float = 0.1
    eval_split: str = "test"
    train_transform: str = "flip"  # none | flip | crop | detr
    eval_transform: str = "resize"  # resize | centre_crop | detr
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_workers: int = 0
    cache_images: bool = False  # keep decoded images in memory (small datasets)
    # The synthetic benchmark's settings; unset: those of the tree at `root` (else the defaults)
    synth: SynthConfig | None = None

    @property
    def loader(self) -> str:
        return self.format or self.name


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    backbone_lr: float | None = None  # None: same as lr
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"  # cosine | step | constant
    step_epochs: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    clip_grad: float | None = None
    label_smoothing: float = 0.0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: bool = True  # convolutions in NHWC: faster on CUDA and on x86 CPUs alike
    compile: bool = False
    max_steps: int | None = None  # stop (resumably) after this many optimiser steps
    log_tensorboard: bool = True


@dataclass(frozen=True)
class EvaluateConfig:
    methods: list[str] = field(default_factory=lambda: ["gradcam"])
    protocol: str = "ca_stream"  # ca_stream | rise
    target: str = "gt"  # gt | pred
    split: str = ""  # empty: dataset.eval_split
    limit: int | None = None
    batch_size: int = 32
    shard_size: int = 256
    metrics: list[str] = field(default_factory=lambda: ["all"])
    memory_budget_mb: int = 1024
    saliency_samples: int = 16
    top_k: int = 5
    parameter_randomisation: bool = False
    checkpoints: dict[str, str] = field(default_factory=dict)
    # model -> its class names in output order (a list, or a text file with one name per line); needed
    # only for a plain weight file whose classes are neither the data's nor ImageNet's
    class_names: dict[str, Any] = field(default_factory=dict)
    explainers: dict[str, dict[str, Any]] = field(default_factory=dict)
    out: str = ""  # empty: results/<dataset>


@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    output_dir: str = "runs"
    seed: int = 0
    # Dotted keys the user set (--config files, --set, shorthand flags), as opposed to defaults and
    # recipes: such a setting is never silently overridden or ignored. Not part of the saved config.
    explicit: frozenset[str] = field(default_factory=frozenset, compare=False, repr=False)

    def is_explicit(self, key: str) -> bool:
        """Whether the user set `key` ('dataset.mean') or a key below it."""
        return any(k == key or k.startswith(key + ".") for k in self.explicit)

    def run_dir(self, model: str | None = None) -> Path:
        """Where training writes: <output_dir>/<dataset>/<model>/ (this config's model by default)."""
        return Path(self.output_dir) / self.dataset.name / (model or self.model.name)

    def to_dict(self, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """The config as plain values; `exclude` leaves out sections (evaluate's runs omit model, train)."""
        data = dataclasses.asdict(self)
        data.pop("explicit")
        model = data.pop("model")
        data["model"] = {"name": model["name"], **model["options"]}
        return _plain({k: v for k, v in data.items() if k not in exclude})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the resolved config as YAML (readable, and loadable by `load_config`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    def to_yaml(self, exclude: tuple[str, ...] = ()) -> str:
        return yaml.safe_dump(self.to_dict(exclude), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=c' -> (['a', 'b'], c) with c parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def overrides_layer(overrides: list[str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r} sets a key below a value")
        node[path[-1]] = value
    return layer


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def merge_layers(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_layers(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _peek(layers: list[dict[str, Any]], section: str, key: str, default: str) -> str:
    value = default
    for layer in layers:
        sec = layer.get(section)
        if isinstance(sec, dict) and key in sec:
            value = sec[key]
    return str(value)


def load_config(
    files: list[str | os.PathLike] | tuple = (),
    overrides: list[str] | tuple = (),
    *,
    recipes: bool = True,
) -> Config:
    """Resolve a `Config` from YAML files and `a.b=c` overrides (see module docstring)."""
    user_layers = [_read_yaml(recipe_path(f)) for f in files] + [overrides_layer(list(overrides))]
    layers: list[dict[str, Any]] = []
    if recipes:
        dataset = _peek(user_layers, "dataset", "name", DatasetConfig.name)
        loader = _peek(user_layers, "dataset", "format", "") or dataset
        model = _peek(user_layers, "model", "name", ModelConfig.name)
        dataset_recipes = [config_dir() / "datasets" / f"{n}.yaml" for n in dict.fromkeys((dataset, loader))]
        existing = [r for r in dataset_recipes if r.is_file()][:1]  # by name, else by format
        for recipe in existing + [config_dir() / "models" / f"{model}.yaml"]:
            if recipe.is_file():
                layers.append(_read_yaml(recipe))
    merged: dict[str, Any] = {}
    for layer in layers + user_layers:
        merged = merge_layers(merged, layer)
    return dataclasses.replace(config_from_dict(merged),
                               explicit=frozenset(key for layer in user_layers for key in flatten(layer)))


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {'dotted.key': value} (an empty dict is a value)."""
    if not isinstance(data, dict) or (not data and prefix):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_from_dict(data: dict[str, Any]) -> Config:
    sections = [f.name for f in dataclasses.fields(Config) if f.name != "explicit"]
    unknown = set(data) - set(sections)
    if unknown:
        raise ConfigError(unknown_key_message("config", sorted(unknown)[0], sections))
    top = {name: coerce(data[name], type(getattr(Config, name)), name) for name in ("output_dir", "seed")
           if name in data}
    model = dict(data.get("model", {}) or {})
    return Config(dataset=build_section(DatasetConfig, data.get("dataset", {}), "dataset"),
                  model=ModelConfig(name=str(model.pop("name", ModelConfig.name)), options=model),
                  train=build_section(TrainConfig, data.get("train", {}), "train"),
                  evaluate=build_section(EvaluateConfig, data.get("evaluate", {}), "evaluate"), **top)
