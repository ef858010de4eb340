"""Stage configs: each option declared once, as a pydantic dataclass field.

Why pydantic dataclasses (not BaseModel, not bare dataclasses with metadata):
they stay real dataclasses, so `dataclasses.asdict/replace` and attribute
access keep working everywhere, while pydantic does the type coercion and the
bounds (`ge`, `le`, `Literal` choices) with no hand-written checks. The
CLI flags (`jobs/`), the README option lists and run.json all come from the
same declaration through `option_specs`.

Resolution: defaults < `--config` YAML < flags typed. A bad value is one
BadInputError line naming the option (exit 2).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import Field, JsonValue, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from .errors import BadInputError

T = TypeVar("T")

# config= for every stage config: unknown keys are an error; values are re-checked on assignment
# (a number read from YAML for a text option is that text, as `name: 50` always was)
CONFIG = {
    "extra": "forbid",
    "validate_assignment": True,
    "arbitrary_types_allowed": True,
    "coerce_numbers_to_str": True,
}


def stage_config(cls: type[T]) -> type[T]:
    """Make `cls` a validated stage config (a pydantic dataclass that forbids unknown options)."""
    return pydantic_dataclass(config=CONFIG)(cls)  # type: ignore[call-overload]


def option(
    default: Any,
    help: str,
    *,
    digest: bool = True,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    flag: str | None = None,
    hidden: bool = False,
    metavar: str | None = None,
    trajectory: bool = False,
) -> Any:
    """One option: its default, help line and bounds, declared once.

    `digest=False` marks options that do not change the outputs (workers, device…):
    they are left out of the up-to-date digest. `flag` overrides the generated
    `--option-name`; `hidden` keeps it out of `--help` (still settable). `trajectory=True` marks a
    training option that decides the trajectory: `--resume auto` only continues a checkpoint whose
    recorded value matches (`trajectory_fields`).
    """
    extra: dict[str, JsonValue] = {
        "digest": digest,
        "flag": flag,
        "hidden": hidden,
        "metavar": metavar,
        "trajectory": trajectory,
    }
    return Field(default, description=help, ge=ge, gt=gt, le=le, lt=lt, json_schema_extra=extra)


Fingerprint = Literal["stat", "content"]


def fingerprint_option(inputs: str, stat: str) -> Any:
    """`--fingerprint`, declared alike by the stages that read inputs outside the root: how the up-to-date check
    sees that `inputs` changed. `stat` says what the default listing holds for that stage."""
    return option(
        "stat",
        f"How a change to {inputs} is seen: stat ({stat}; an edit keeping those is missed) "
        "or content (every byte hashed, read in full at each run).",
        digest=False,
    )


@dataclass(frozen=True)
class OptionSpec:
    """What the CLI, the README check and run.json need to know of one option."""

    name: str
    annotation: Any
    default: Any
    help: str
    digest: bool
    flag: str
    hidden: bool
    metavar: str | None
    bounds: dict[str, float]
    trajectory: bool = False

    @property
    def kind(self) -> str:
        """bool | int | float | str | choice | list (a comma-separated sequence)."""
        return _kind(self.annotation)

    @property
    def choices(self) -> tuple[str, ...]:
        return _choices(self.annotation)

    @property
    def item_type(self) -> type:
        args = [a for a in typing.get_args(_unoptional(self.annotation)) if a is not Ellipsis]
        return args[0] if args else str


def option_specs(cls: type) -> list[OptionSpec]:
    """The declared options of a stage config, in declaration order."""
    fields = getattr(cls, "__pydantic_fields__", None)
    if fields is None:
        raise TypeError(f"{cls.__name__} is not a stage config (use @stage_config)")
    specs = []
    for name in _declaration_order(cls, fields):
        info = fields[name]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        bounds = {}
        for meta in info.metadata:
            for bound in ("ge", "gt", "le", "lt"):
                value = getattr(meta, bound, None)
                if value is not None:
                    bounds[bound] = value
        specs.append(
            OptionSpec(
                name=name,
                annotation=info.annotation,
                default=info.get_default(call_default_factory=True),
                help=info.description or "",
                digest=bool(extra.get("digest", True)),
                flag=str(extra.get("flag") or "--" + name.replace("_", "-")),
                hidden=bool(extra.get("hidden", False)),
                metavar=str(extra["metavar"]) if extra.get("metavar") else None,
                bounds=bounds,
                trajectory=bool(extra.get("trajectory", False)),
            )
        )
    return specs


def trajectory_fields(cls: type) -> tuple[str, ...]:
    """The options declared with `trajectory=True`: a resumed run must have recorded the same values."""
    return tuple(s.name for s in option_specs(cls) if s.trajectory)


def _declaration_order(cls: type, fields: dict[str, Any]) -> list[str]:
    """A config's own options first, then those it inherits (shared runtime options like --device last)."""
    order: list[str] = []
    for klass in cls.__mro__:
        order += [n for n in getattr(klass, "__annotations__", {}) if n in fields and n not in order]
    return order + [n for n in fields if n not in order]


def load_config(cls: type[T], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Resolve a config: declared defaults < YAML file < overrides (None = not given)."""
    values: dict[str, Any] = {}
    if yaml_path:
        loaded = read_yaml_mapping(yaml_path, "config file", "a mapping of option: value")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    specs = {s.name: s for s in option_specs(cls)}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise BadInputError(f"unknown config option(s) for {cls.__name__}: {', '.join(unknown)}")
    for name, value in list(values.items()):
        if isinstance(value, bool) and specs[name].kind in ("int", "float"):  # pydantic would read true as 1
            raise BadInputError(f"option {specs[name].flag}: Input should be a number, not a boolean (got {value!r})")
        if specs[name].kind == "list" and isinstance(value, str):
            values[name] = [p.strip() for p in value.split(",") if p.strip()]
    try:
        cfg = cls(**values)
    except ValidationError as exc:
        raise BadInputError(validation_message(exc, specs)) from None
    validate: Callable[[], None] | None = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def validation_message(exc: ValidationError, specs: dict[str, OptionSpec]) -> str:
    """The first validation error as one line naming the option as the user types it."""
    err = exc.errors()[0]
    name = str(err["loc"][0]) if err["loc"] else "?"
    flag = specs[name].flag if name in specs else name
    return f"option {flag}: {err['msg']} (got {err.get('input')!r})"


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
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    return dict(cfg or {})


def digestable_config(cfg: Any) -> dict[str, Any]:
    """Options that change the outputs; those declared with digest=False (workers, device…) are left out."""
    if not (dataclasses.is_dataclass(cfg) and hasattr(type(cfg), "__pydantic_fields__")):
        return config_dict(cfg)
    return {s.name: getattr(cfg, s.name) for s in option_specs(type(cfg)) if s.digest}


def from_recorded(cls: type[T], recorded: dict[str, Any] | None) -> T:
    """A config rebuilt from a run.json record; options it does not record keep their defaults."""
    names = {s.name for s in option_specs(cls)}
    return cls(**{k: v for k, v in (recorded or {}).items() if k in names})


def _unoptional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return annotation


def _kind(annotation: Any) -> str:
    hint = _unoptional(annotation)
    if typing.get_origin(hint) is Literal:
        return "choice"
    if typing.get_origin(hint) in (tuple, list):
        return "list"
    if hint in (bool, int, float):
        return hint.__name__
    return "str"


def _choices(annotation: Any) -> tuple[str, ...]:
    hint = _unoptional(annotation)
    return tuple(str(a) for a in typing.get_args(hint)) if typing.get_origin(hint) is Literal else ()
