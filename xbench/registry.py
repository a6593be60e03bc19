"""Name -> factory registries for models, explainers, metrics and datasets.

One `Registry` class serves every kind. Entries are added with a decorator::

    @register_model("cnn", description="timm CNN with global average pooling")
    def build_cnn(num_classes, backbone="resnet50"): ...

Third-party packages add entries through the entry-point group ``xbench.methods``:
each entry point names a module (or object) whose import registers its entries. Plugins
are loaded the first time any registry is read, so they show up in ``xbench list``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, fields
from importlib.metadata import entry_points
from typing import Any, Callable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "xbench.methods"


class UnknownNameError(KeyError):
    """Raised for a name no registry entry has; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know of a registered model family."""

    options: type | None = None  # a dataclass whose fields are the options of a factory taking **options
    explains: str | None = None  # what an ante-hoc model's own explanation is (its bare name means attention@it)
    head_maps: bool = False  # figures show its per-head attention
    randomisation_blocks: Callable[[Any], list] | None = None  # model -> its blocks, top first (sanity.py)
    reads_foreign: Callable[..., Any] | None = None  # reads its official checkpoint files (methods/loading.py)
    foreign_format: str = "foreign file"  # how such a file is described, formatted with the model's str options


@dataclass(frozen=True)
class ExplainerSpec:
    models: str = "any model"  # which models it explains, as `xbench list` shows it


@dataclass(frozen=True)
class MetricSpec:
    """What a metric is: its family, how each result column is read, and what the engine must prepare."""

    family: str = "other"  # what `--set evaluate.metrics=all,<family>` selects; xbench list groups by it
    columns: dict[str, dict] = field(default_factory=dict)  # column name (or template) -> metrics.base.column(...)
    opt_in: bool = False  # left out of `all`: costs more than a forward pass per step
    needs: str | None = None  # what the engine prepares: randomisation, interventions, mosaics, shift


@dataclass(frozen=True)
class DatasetSpec:
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str
    spec: Any  # the registry's spec type: ModelSpec, ExplainerSpec, MetricSpec or DatasetSpec


class Registry:
    """A named collection of factories of one kind ("model", "explainer", ...)."""

    def __init__(self, kind: str, spec: type = DatasetSpec):
        self.kind, self.spec = kind, spec
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, description: str | None = None, **options: Any):
        """Decorator registering `factory` under `name`; `options` are the fields of the registry's spec
        (an unknown one is refused with the known ones)."""
        known = [f.name for f in fields(self.spec)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"register {self.kind} {name!r}: unknown option(s) {', '.join(unknown)}; a {self.kind} "
                            f"takes {', '.join(known) or 'none besides description'}")
        spec = self.spec(**options)

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                existing = self._entries[name].factory
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by "
                    f"{existing.__module__}.{existing.__qualname__}; pick another name"
                )
            text = description or _first_line(factory.__doc__) or ""
            self._entries[name] = Entry(name, factory, text, spec)
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        load_builtins_and_plugins()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name).factory(*args, **kwargs)

    def names(self) -> list[str]:
        load_builtins_and_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """Every entry in registration order (xbench's own first, then plugins)."""
        load_builtins_and_plugins()
        return list(self._entries.values())

    def __contains__(self, name: str) -> bool:
        load_builtins_and_plugins()
        return name in self._entries


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""


MODELS = Registry("model", ModelSpec)
EXPLAINERS = Registry("explainer", ExplainerSpec)
METRICS = Registry("metric", MetricSpec)
DATASETS = Registry("dataset", DatasetSpec)

register_model = MODELS.register
register_explainer = EXPLAINERS.register
register_metric = METRICS.register
register_dataset = DATASETS.register

_loaded = False
_load_lock = threading.RLock()
# Modules whose import registers xbench's own entries.
_BUILTIN_MODULES = ("xbench.datasets", "xbench.methods", "xbench.metrics")


def load_builtins_and_plugins() -> None:
    """Import xbench's registering modules, then every `xbench.methods` entry point, once."""
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if _loaded:
            return
        _loaded = True
        import importlib

        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not take xbench down with it
                log.warning("xbench plugin %r (%s) failed to load: %s", ep.name, ep.value, exc)
