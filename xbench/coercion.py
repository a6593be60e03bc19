"""Typed values from YAML: a mapping checked against a dataclass section or a builder's signature, each value
converted to its annotated type, and errors that name the key and the valid ones (`ConfigError`)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from typing import Any

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A configuration file or override that cannot be applied."""


def unknown_key_message(section: str, key: str, valid: list[str]) -> str:
    return f"unknown key {section}.{key}; valid keys of {section}: {', '.join(sorted(valid))}"


def build_section(cls: type, values: dict[str, Any] | None, section: str) -> Any:
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"section {section} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(unknown_key_message(section, key, list(fields)))
        target = hints[key]
        nested = [a for a in (typing.get_args(target) or (target,)) if dataclasses.is_dataclass(a)]
        if nested and value is not None:  # a section (or an optional one) of its own
            kwargs[key] = build_section(nested[0], value, f"{section}.{key}")
        else:
            kwargs[key] = coerce(value, target, f"{section}.{key}")
    return cls(**kwargs)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert a YAML value to the field's annotated type; raise naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if hint is Any:
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [coerce(v, item, key) for v in value]
        if origin is tuple:
            if len(args) > 1 and args[-1] is not Ellipsis and len(items) != len(args):
                raise ConfigError(f"{key} must have {len(args)} values, got {len(items)}")
            return tuple(items)
        return items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def check_builder_options(builder: Any, options: dict[str, Any], section: str = "model") -> dict[str, Any]:
    """The options a builder takes, checked against its signature's names and annotated types (as the
    dataclass sections are): an unknown name is refused with the valid ones, a wrong type with the key."""
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    valid = [n for n, p in params.items() if n != "num_classes" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in options:
        if key not in valid:
            raise ConfigError(unknown_key_message(section, key, valid))
    hints = _builder_hints(builder)
    return {k: coerce(v, hints[k], f"{section}.{k}") if k in hints and k != "model" else v for k, v in options.items()}


def _builder_hints(builder: Any) -> dict[str, Any]:
    """The builder's annotations resolved (a class: its __init__'s); {} when they cannot be."""
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        return typing.get_type_hints(target)
    except Exception:  # annotations naming types the module imports only for type checkers
        return {}
