"""The usage lines of README.md's "Commands" section, generated from the commands' own options.

`python scripts/readme_usage.py` prints every block; `--write` rewrites them in README.md
(`make docs`). tests/test_readme.py checks README.md against this, so the option lists
cannot drift from `--help`.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
COMMON = {"root", "config", "force", "s3_endpoint", "help"}  # said once above the blocks
DOCUMENTED_TOOLS = ("synth", "query", "sql")  # commands with a README block besides the stages
WIDTH = 110
TYPE_WORDS = {"integer": "N", "integer range": "N", "float": "X", "float range": "X", "text": "TEXT"}


def _commands() -> dict[str, click.Command]:
    sys.path.insert(0, str(ROOT))
    from jobs.cli import cli
    from plankton_core.stage import stages

    ctx = click.Context(cli)
    names = [s.name for s in stages()] + list(DOCUMENTED_TOOLS)
    return {name: cli.get_command(ctx, name) for name in names}  # type: ignore[misc]


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


def usage(name: str, command: click.Command) -> str:
    """`plankton NAME [--option default] …` wrapped under the command name, as an indented code block."""
    words = []
    for param in command.params:
        if isinstance(param, click.Argument):
            words.append(f"{param.name.upper()}…" if param.nargs == -1 else param.name.upper())
        elif isinstance(param, click.Option) and param.name not in COMMON and not param.hidden:
            words.append(_option_words(param))
    head = f"plankton {name}" + (" --root URI" if any(p.name == "root" for p in command.params) else "")
    words = [w.replace(" ", "\xa0") for w in words]  # never break inside one option's brackets
    lines = textwrap.wrap(
        " ".join([head] + words),
        WIDTH,
        subsequent_indent=" " * (len(name) + 10),
        break_long_words=False,
        break_on_hyphens=False,
    )
    return "\n".join("    " + line.replace("\xa0", " ") for line in lines)


def blocks() -> dict[str, str]:
    return {name: usage(name, cmd) for name, cmd in _commands().items()}


def readme_blocks(text: str) -> dict[str, str]:
    """The indented usage block under each `### name` heading of README.md."""
    found = {}
    for match in re.finditer(r"^### (\S+)[^\n]*\n((?:    [^\n]*\n)+)", text, flags=re.M):
        found[match.group(1)] = match.group(2).rstrip("\n")
    return found


def write(text: str) -> str:
    generated = blocks()
    for name, block in generated.items():
        pattern = re.compile(rf"(^### {re.escape(name)}\b[^\n]*\n)((?:    [^\n]*\n)*)", flags=re.M)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no '### {name}' heading: add one under Commands")
        text = pattern.sub(lambda m, b=block: m.group(1) + b + "\n", text, count=1)
    return text


if __name__ == "__main__":
    if "--write" in sys.argv:
        README.write_text(write(README.read_text()))
    else:
        print("\n\n".join(f"### {n}\n{b}" for n, b in blocks().items()))
