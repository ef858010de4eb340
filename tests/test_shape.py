"""The house's shape: every stage room alike, options declared once, functions short enough to read at once."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import click

from plankton_core.config import option_specs
from plankton_core.stage import Stage, stages

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "plankton_core"
MAX_FUNCTION_LINES = 80


def _package_dir(stage: Stage) -> Path:
    module = importlib.import_module(stage.config.__module__)
    return Path(module.__file__).parent  # type: ignore[arg-type]


def test_every_registered_stage_has_a_config_and_a_stage_module():
    for stage in stages():
        room = _package_dir(stage)
        assert room.parent == LIBRARY, f"{stage.name}: its config lives outside a stage package ({room})"
        assert (room / "config.py").is_file() and stage.config.__module__.endswith(".config"), stage.name
        assert (room / "stage.py").is_file(), f"{stage.name}: no stage.py in {room}"
        assert isinstance(stage.body, str) and stage.body.split(":")[0].endswith(".stage"), (
            f"{stage.name}: its body must live in stage.py, not {stage.body}"
        )


def test_query_options_come_from_its_declaration():
    from jobs.query import command
    from plankton_core.query.config import QueryConfig

    declared = {spec.name for spec in option_specs(QueryConfig)}
    flags = {p.name for p in command.params if isinstance(p, click.Option)} - {"root", "config", "s3_endpoint"}
    assert flags == declared


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function in `source` longer than `limit` lines, decorators left out."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_the_length_check_catches_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def fits():\n{body[: body.rindex(chr(10))]}\n") == []
    assert long_functions(f"@decorator\ndef too_long():\n{body}\n") == [("too_long", MAX_FUNCTION_LINES + 1)]


def test_no_library_function_is_over_80_lines():
    offenders = [
        f"{path.relative_to(REPO)}: {name} ({lines} lines)"
        for path in sorted(LIBRARY.rglob("*.py"))
        for name, lines in long_functions(path.read_text())
    ]
    assert not offenders, "split into named steps: " + "; ".join(offenders)


def test_stage_packages_hold_no_re_export_shims():
    """A stage package's __init__ registers the stage and names its config; code lives in its modules."""
    for stage in stages():
        init = _package_dir(stage) / "__init__.py"
        tree = ast.parse(init.read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert "__getattr__" not in names, f"{init}: import from the module that defines the name instead"
