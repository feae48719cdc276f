"""The machinery of the typed configuration: frozen dataclasses built from YAML mappings,
checked on the way (unknown keys with a suggestion, wrong types and choices in one
line), and turned back into plain mappings."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError


def check_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = difflib.get_close_matches(value, choices, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}; found {value!r}{suggestion}")


def convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, found {type(value).__name__}")
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        for arg in args[:-1]:
            try:
                return convert(value, arg, where)
            except ConfigError:
                continue
        return convert(value, args[-1], where)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        item = typing.get_args(hint)[0]
        return tuple(convert(v, item, f"{where}[{i}]") for i, v in enumerate(items))
    if origin in (Mapping, dict) or origin is typing.get_origin(Mapping[str, int]):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, found {type(value).__name__}")
        _, item = typing.get_args(hint)
        return types.MappingProxyType({str(k): convert(v, item, f"{where}.{k}") for k, v in value.items()})
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, found {value!r}")


def from_dict(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Builds dataclass `cls` from a mapping; unknown keys are an error with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown key {key!r}{suggestion}; expected one of {', '.join(names)}")
    kwargs = {k: convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def section_of(hint: Any) -> type | None:
    """The dataclass a field holds (also through `X | None`), else None."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def to_dict(config: Any) -> Any:
    """A JSON-ready view of a config (recorded in qc.json and the run folder)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, tuple):
        return [to_dict(v) for v in config]
    return config
