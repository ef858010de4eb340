"""Stage configs are dataclasses: defaults, then a YAML file, then explicit flags (flags win)."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import BadInputError

T = TypeVar("T")


def load_config(cls: type[T], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Resolve a config: dataclass defaults < YAML file < overrides. Unknown keys are an error."""
    values: dict[str, Any] = {}
    if yaml_path:
        loaded = read_yaml_mapping(yaml_path, "config file", "a mapping of option: value")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise BadInputError(f"unknown config option(s) for {cls.__name__}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    coerced = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    try:
        cfg = cls(**coerced)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"bad config for {cls.__name__}: {exc}") from None
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def read_yaml_mapping(path: str | Path, what: str, shape: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; each failure is one BadInputError line naming `what`."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise BadInputError(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise BadInputError(f"cannot parse {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{what} {path} must hold {shape}")
    return data


def config_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data, for run.json and digests."""
    return dataclasses.asdict(cfg)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else hint
        origin = typing.get_origin(hint)
    try:
        if hint is bool and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint is bool and not isinstance(value, bool):
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if (hint in (int, float) and isinstance(value, bool)) or (hint is str and not isinstance(value, (str, int, float))):
            raise ValueError(value)  # `size: true` or `name: [a, b]` in YAML is a mistake, not a value
        if hint in (int, float, str) and not isinstance(value, hint):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
        if origin in (tuple, list) and isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            item = typing.get_args(hint)[0] if typing.get_args(hint) else str
            return origin(item(p) for p in parts)
        if origin is tuple and isinstance(value, list):
            return tuple(value)
    except (TypeError, ValueError):
        raise BadInputError(f"config option {name}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value
