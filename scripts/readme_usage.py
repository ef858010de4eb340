"""The usage lines of docs/commands.md, generated from the commands' own options.

Each `### <command>` heading of a file in USAGE_FILES is followed by an indented block,
`plankton <command> --root URI [--option default] …`, made from the command's click
options (a command group, `k8s`, gets one line per subcommand). `python scripts/readme_usage.py`
prints every block; `--write` rewrites them in place (`make docs`). tests/test_readme.py
checks the files against this, so the option lists cannot drift from `--help`.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
USAGE_FILES = ("docs/commands.md",)  # where the `### <command>` usage blocks live, relative to ROOT
COMMON = {"root", "config", "force", "s3_endpoint", "help"}  # said once above the blocks (commands with --root)
DOCUMENTED_TOOLS = ("synth", "detect-predict", "query", "sql", "submit", "k8s")  # tools with a block
WIDTH = 110
TYPE_WORDS = {"integer": "N", "integer range": "N", "float": "X", "float range": "X", "text": "TEXT"}


def usage_paths(root: Path = ROOT) -> list[Path]:
    return [root / name for name in USAGE_FILES]


def _commands() -> dict[str, click.Command]:
    sys.path.insert(0, str(ROOT))
    from jobs.cli import cli
    from plankton_core.stage import stages

    ctx = click.Context(cli)
    names = [s.name for s in stages()] + list(DOCUMENTED_TOOLS)
    return {name: cli.get_command(ctx, name) for name in names}  # type: ignore[misc]


def leaves(name: str, command: click.Command) -> list[tuple[str, click.Command]]:
    """The command itself, or each subcommand of a group (`k8s render`, `k8s run-local`, …)."""
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        subs = [(sub, command.get_command(ctx, sub)) for sub in command.list_commands(ctx)]
        return [(f"{name} {sub}", cmd) for sub, cmd in subs if cmd is not None and not cmd.hidden]
    return [(name, command)]


def listed(command: click.Command, param: click.Parameter) -> bool:
    """Whether an option belongs in the usage line: the common ones are said once for commands with --root."""
    has_root = any(p.name == "root" for p in command.params)
    return (
        isinstance(param, click.Option)
        and not param.hidden
        and param.name != "help"
        and not (has_root and param.name in COMMON)
    )


def _option_words(param: click.Option) -> str:
    flag = max(param.opts, key=len)
    if param.is_flag and param.secondary_opts:
        return f"[{flag}/{max(param.secondary_opts, key=len)}]"
    if param.is_flag:
        return f"[{flag}]"
    if isinstance(param.type, click.Choice):
        return f"[{flag} {'|'.join(map(str, param.type.choices))}]"
    match = re.search(r"\[([^\[\]]*)\]\s*$", param.help or "")
    value = match.group(1) if match else (param.metavar or TYPE_WORDS.get(param.type.name, param.type.name.upper()))
    return f"[{flag} {value}]"


def _usage_line(name: str, command: click.Command) -> list[str]:
    words = []
    for param in command.params:
        if isinstance(param, click.Argument):
            words.append(f"{param.name.upper()}…" if param.nargs == -1 else param.name.upper())
        elif listed(command, param):
            words.append(_option_words(param))  # type: ignore[arg-type]
    head = f"plankton {name}" + (" --root URI" if any(p.name == "root" for p in command.params) else "")
    words = [w.replace(" ", "\xa0") for w in words]  # never break inside one option's brackets
    lines = textwrap.wrap(
        " ".join([head] + words),
        WIDTH,
        subsequent_indent=" " * (len(name) + 10),
        break_long_words=False,
        break_on_hyphens=False,
    )
    return ["    " + line.replace("\xa0", " ") for line in lines]


def usage(name: str, command: click.Command) -> str:
    """`plankton NAME [--option default] …` wrapped under the command name, as an indented code block."""
    return "\n".join(line for leaf, cmd in leaves(name, command) for line in _usage_line(leaf, cmd))


def blocks() -> dict[str, str]:
    return {name: usage(name, cmd) for name, cmd in _commands().items()}


def readme_blocks(text: str) -> dict[str, str]:
    """The indented usage block under each `### name` heading of one Markdown text."""
    found = {}
    for match in re.finditer(r"^### (\S+)[^\n]*\n((?:    [^\n]*\n)+)", text, flags=re.M):
        found[match.group(1)] = match.group(2).rstrip("\n")
    return found


def documented(paths: list[Path] | None = None) -> dict[str, str]:
    """The usage block of every command across the files; a command with blocks in two places is an error."""
    found: dict[str, str] = {}
    where: dict[str, Path] = {}
    for path in paths or usage_paths():
        for name, block in readme_blocks(path.read_text()).items():
            if name in found:
                raise SystemExit(f"`### {name}` has a usage block in both {where[name]} and {path}: keep one")
            found[name], where[name] = block, path
    return found


def _heading(name: str) -> re.Pattern[str]:
    return re.compile(rf"(^### {re.escape(name)}(?![\w-])[^\n]*\n)((?:    [^\n]*\n)*)", flags=re.M)


def write_texts(texts: dict[Path, str], generated: dict[str, str] | None = None) -> dict[Path, str]:
    """Each file's text with the block under every `### <command>` heading regenerated."""
    generated = blocks() if generated is None else generated
    texts = dict(texts)
    for name, block in generated.items():
        holders = [path for path, text in texts.items() if _heading(name).search(text)]
        if not holders:
            files = ", ".join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in texts)
            raise SystemExit(f"no '### {name}' heading in {files}: add one where the command is described")
        if len(holders) > 1:
            raise SystemExit(f"'### {name}' is a heading in {holders[0]} and {holders[1]}: keep one")
        path = holders[0]
        texts[path] = _heading(name).sub(lambda m, b=block: m.group(1) + b + "\n", texts[path], count=1)
    return texts


def write(paths: list[Path] | None = None) -> list[Path]:
    """Rewrite the usage blocks in place; returns the files that changed."""
    paths = paths or usage_paths()
    before = {path: path.read_text() for path in paths}
    after = write_texts(before)
    changed = [path for path in paths if after[path] != before[path]]
    for path in changed:
        path.write_text(after[path])
    return changed


if __name__ == "__main__":
    if "--write" in sys.argv:
        for path in write():
            print(f"rewrote the usage lines in {path.relative_to(ROOT)}")
    else:
        print("\n\n".join(f"### {n}\n{b}" for n, b in blocks().items()))
