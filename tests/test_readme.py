"""The documentation cannot drift: option lists are generated from the commands (`make docs`), and links resolve.

The usage blocks live under the `### <command>` headings of scripts/readme_usage.py's USAGE_FILES
(docs/commands.md); every relative link of README.md, ARCHITECTURE.md and docs/*.md must name a file that
exists, and a `#fragment` into a Markdown file must name one of its headings.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_usage():
    spec = importlib.util.spec_from_file_location("readme_usage", ROOT / "scripts" / "readme_usage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_command_block_matches_its_help():
    usage = _readme_usage()
    paths = usage.usage_paths()
    assert paths and all(p.is_file() for p in paths), paths
    documented = usage.documented(paths)
    files = ", ".join(usage.USAGE_FILES)
    for name, block in usage.blocks().items():
        assert name in documented, f"{files}: no usage block under '### {name}': add the heading, then `make docs`"
        assert documented[name] == block, (
            f"{files}: the usage of `plankton {name}` differs from --help: run `make docs`"
        )


def test_generated_usage_lists_every_option_of_the_help():
    usage = _readme_usage()
    commands = usage._commands()
    assert {"crop", "pretrain", "detect", "report", "synth", "query", "sql", "detect-predict", "submit", "k8s"} <= set(
        commands
    )
    for name, command in commands.items():
        block = usage.usage(name, command)
        for leaf, cmd in usage.leaves(name, command):
            assert f"plankton {leaf}" in block, f"{name}: no usage line for `plankton {leaf}`"
            for param in cmd.params:
                if param.param_type_name == "option" and usage.listed(cmd, param):
                    assert max(param.opts, key=len) in block, f"{leaf}: {param.opts} missing from its usage"


def test_a_drifted_file_is_caught(tmp_path):
    usage = _readme_usage()
    text = usage.usage_paths()[0].read_text()
    documented = usage.readme_blocks(text)
    generated = usage.blocks()
    name = next(iter(generated))
    drifted = text.replace(documented[name], documented[name] + " [--no-such-option 1]", 1)
    assert usage.readme_blocks(drifted)[name] != generated[name]
    # and `make docs` puts it right, in whichever file holds the heading
    path = tmp_path / "commands.md"
    path.write_text(drifted)
    other = tmp_path / "other.md"
    other.write_text("# nothing to generate here\n")
    fixed = usage.write_texts({other: other.read_text(), path: drifted}, generated)
    assert usage.readme_blocks(fixed[path])[name] == generated[name] and fixed[other] == other.read_text()


def test_a_command_without_a_heading_or_with_two_is_refused(tmp_path):
    usage = _readme_usage()
    generated = {"crop": "    plankton crop --root URI"}
    with pytest.raises(SystemExit, match="no '### crop' heading"):
        usage.write_texts({tmp_path / "a.md": "### cropping\n"}, generated)
    with pytest.raises(SystemExit, match="keep one"):
        usage.write_texts({tmp_path / "a.md": "### crop\n", tmp_path / "b.md": "### crop\n"}, generated)


# ---- links ----

DOC_FILES = ["README.md", "ARCHITECTURE.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
LINK = re.compile(
    r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|\bsrc=\"([^\"]+)\"|^\s*\[[^\]]+\]:\s*(\S+)", re.M
)


def _without_fences(text: str) -> str:
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.M | re.S)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return re.sub(r"(`+)[^`]*?\1", "", _without_fences(text))


def links(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in LINK.finditer(_prose(text))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _without_fences(text), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of the Markdown file that names a missing file, or a missing heading of a Markdown file."""
    problems = []
    text = path.read_text()
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, file:
            continue
        ref, _, fragment = target.partition("#")
        dest = (path.parent / ref).resolve() if ref else path
        where = path.relative_to(root)
        if not dest.exists():
            problems.append(f"{where}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text()):
            problems.append(f"{where}: {target} (no heading #{fragment} in {dest.name})")
    return problems


def test_the_documentation_files_are_there():
    assert {"README.md", "ARCHITECTURE.md", "docs/commands.md", "docs/contract.md"} <= set(DOC_FILES)


@pytest.mark.parametrize("name", DOC_FILES)
def test_every_relative_link_points_to_a_file_that_exists(name):
    path = ROOT / name
    assert links(path.read_text()) or name != "README.md", "README.md links nowhere"
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Two words\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#two-words) ![pic](docs/missing.png) [gone](docs/b.md)\n"
        '<img src="docs/nope.png"> [bad anchor](docs/a.md#three) `[code](not/a/link.md)` [web](https://x.org/y)\n'
        "```\n[fenced](nor/this.md)\n```\n"
    )
    problems = broken_links(page, tmp_path)
    assert len(problems) == 4, problems
    for bad in ("docs/missing.png", "docs/b.md", "docs/nope.png", "docs/a.md#three"):
        assert any(f": {bad} " in p for p in problems), (bad, problems)
