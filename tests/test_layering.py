"""Dependencies flow one way: no stage package imports another, and plankton_core stays free of click and kubernetes.

The stage packages are the registry's: the package under `plankton_core` holding each
registered stage's body. Every import counts, absolute or relative, at module level or
inside a function. Shared pieces (embedding, scoring, reporting, artifacts, …) sit below
the stages and may be imported by any of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from plankton_core.stage import stages

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "plankton_core"
FORBIDDEN = ("click", "kubernetes")  # the CLI and the cluster client live in jobs/


def module_name(path: Path, base: Path) -> str:
    """`plankton_core/stats/stage.py` → plankton_core.stats.stage; a package's __init__ is the package."""
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, base: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, wherever it sits.

    `from X import name` yields X and X.name (name may be a submodule: `from .. import crop`).
    """
    module = module_name(path, base)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]  # level 1 is the file's own package
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.append((node.lineno, source))
            found += [(node.lineno, f"{source}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def stage_package_of(module: str, stage_packages: set[str]) -> str | None:
    """The stage package a module belongs to (itself or a module inside it), if any."""
    return next((p for p in stage_packages if module == p or module.startswith(p + ".")), None)


def violations(base: Path, stage_packages: set[str], package: str = PACKAGE) -> list[str]:
    """Every import crossing from one stage package into another, and every click/kubernetes import, under
    base/package."""
    problems = []
    for path in sorted((base / package).rglob("*.py")):
        module = module_name(path, base)
        own = stage_package_of(module, stage_packages)
        where = path.relative_to(base)
        for line, target in imported_modules(path, base):
            if target.split(".")[0] in FORBIDDEN:
                problems.append(f"{where}:{line}: imports {target} ({package} stays free of {' and '.join(FORBIDDEN)})")
            other = stage_package_of(target, stage_packages)
            if own and other and other != own:
                problems.append(f"{where}:{line}: stage package {own} imports stage package {other} ({target})")
    return sorted(set(problems))


def registered_stage_packages() -> set[str]:
    """`plankton_core.<pkg>` for each registered stage whose body lives in plankton_core."""
    out = set()
    for stage in stages():
        body = stage.body if isinstance(stage.body, str) else f"{stage.body.__module__}:"
        parts = body.partition(":")[0].split(".")
        if parts[0] == PACKAGE and len(parts) > 1:
            out.add(f"{PACKAGE}.{parts[1]}")
    return out


def test_the_registry_names_the_stage_packages():
    packages = registered_stage_packages()
    assert f"{PACKAGE}.stats" in packages
    assert all((REPO / name.replace(".", "/") / "__init__.py").is_file() for name in packages), packages


def test_no_stage_package_imports_another_and_plankton_core_imports_no_click_or_kubernetes():
    problems = violations(REPO, registered_stage_packages())
    assert not problems, "\n".join(problems)


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    """A package with two stage packages `alpha` and `beta` and a shared module."""
    pkg = tmp_path / PACKAGE
    for folder in (pkg, pkg / "alpha", pkg / "beta", pkg / "beta" / "inner"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text("")
    (pkg / "shared.py").write_text("import json\n")
    (pkg / "alpha" / "stage.py").write_text(
        "from ..shared import json\nfrom . import helpers\nfrom .helpers import x\n"
    )
    (pkg / "alpha" / "helpers.py").write_text("x = 1\n")
    (pkg / "beta" / "inner" / "deep.py").write_text("from ...shared import json\n")
    return tmp_path


STAGE_PACKAGES = {f"{PACKAGE}.alpha", f"{PACKAGE}.beta"}


def test_a_clean_tree_has_no_violations(fake_tree):
    assert violations(fake_tree, STAGE_PACKAGES) == []


@pytest.mark.parametrize(
    ("path", "source", "target"),
    [
        ("alpha/stage.py", "from ..beta import run\n", "plankton_core.beta"),
        ("alpha/stage.py", "from .. import beta\n", "plankton_core.beta"),
        ("alpha/stage.py", "from plankton_core import beta\n", "plankton_core.beta"),
        ("alpha/stage.py", "import plankton_core.beta.stage\n", "plankton_core.beta.stage"),
        ("alpha/stage.py", "from plankton_core.beta.stage import body\n", "plankton_core.beta.stage"),
        ("alpha/__init__.py", "from ..beta.stage import body\n", "plankton_core.beta.stage"),
        ("alpha/stage.py", "def late():\n    from ..beta import stage\n    return stage\n", "plankton_core.beta"),
        (
            "beta/inner/deep.py",
            "class C:\n    def m(self):\n        from ...alpha.helpers import x\n",
            "plankton_core.alpha.helpers",
        ),
    ],
)
def test_a_stage_importing_another_is_caught(fake_tree, path, source, target):
    (fake_tree / PACKAGE / path).write_text(source)
    problems = violations(fake_tree, STAGE_PACKAGES)
    assert problems and all("imports stage package" in p for p in problems), problems
    assert any(p.startswith(f"{PACKAGE}/{path}:") and f"({target}" in p for p in problems), problems


@pytest.mark.parametrize(
    "source",
    [
        "import click\n",
        "from click import echo\n",
        "def f():\n    import kubernetes.client\n",
        "from kubernetes import client\n",
    ],
)
def test_click_or_kubernetes_anywhere_in_plankton_core_is_caught(fake_tree, source):
    (fake_tree / PACKAGE / "shared.py").write_text(source)
    problems = violations(fake_tree, STAGE_PACKAGES)
    assert problems and "stays free of click and kubernetes" in problems[0], problems


def test_shared_modules_may_be_imported_by_every_stage(fake_tree):
    (fake_tree / PACKAGE / "beta" / "stage.py").write_text(
        "from ..shared import json\nfrom plankton_core import shared\n"
    )
    assert violations(fake_tree, STAGE_PACKAGES) == []
