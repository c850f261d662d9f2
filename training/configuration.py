"""Dataclass configs from YAML/JSON files plus ``--key=value`` overrides, type-checked.

``load_config(TrainConfig, "configs/x.yaml", ["--stage1.optim.lr=1e-4"])`` reads the
file, applies the overrides (dotted keys reach nested dataclasses), checks every
value against the field's type annotation and rejects unknown keys, so a typo in
a config never goes unnoticed.  No code is evaluated: values are parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not fit the config dataclass."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no config file at {path}")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``--a.b=value`` -> (["a", "b"], parsed YAML value)."""
    if not item.startswith("--") or "=" not in item:
        raise ConfigError(f"overrides look like --key=value, got {item!r}")
    key, raw = item[2:].split("=", 1)
    if not key:
        raise ConfigError(f"empty key in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.replace("-", "_").split("."), value


def set_nested(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _check_value(hint: Any, value: Any, where: str) -> Any:
    """Return ``value`` converted to ``hint`` where lossless, else raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return build_dataclass(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        return [_check_value(item_hint, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _default_section(field: dataclasses.Field) -> dict[str, Any] | None:
    """The field's default as a mapping when it is a nested config section."""
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    elif field.default is not dataclasses.MISSING:
        default = field.default
    else:
        return None
    return dataclasses.asdict(default) if dataclasses.is_dataclass(default) else None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_dataclass(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Instantiate ``cls`` from a mapping, strictly: unknown keys and bad types fail.

    A partial mapping for a nested section updates that section's defaults (so
    ``--data.validation.path=x`` keeps the validation split's default split name).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config keys {[prefix + k for k in unknown]}; known: {sorted(fields)}")
    values = {}
    for key, value in data.items():
        default = _default_section(fields[key])
        if default is not None and isinstance(value, dict):
            value = _merge(default, value)
        values[key] = _check_value(hints[key], value, f"{where}.{key}" if where else key)
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """The config from ``path`` (YAML or JSON; optional) with ``--key=value`` overrides."""
    data = read_config_file(path) if path else {}
    for item in overrides or []:
        keys, value = parse_override(item)
        set_nested(data, keys, value)
    return build_dataclass(cls, data)
