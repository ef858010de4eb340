"""README.md's option lists are generated from the commands' own options (`make docs`): they cannot drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_usage():
    spec = importlib.util.spec_from_file_location("readme_usage", ROOT / "scripts" / "readme_usage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_command_block_matches_its_help():
    usage = _readme_usage()
    documented = usage.readme_blocks((ROOT / "README.md").read_text())
    for name, block in usage.blocks().items():
        assert name in documented, f"README.md has no usage block under '### {name}': run `make docs`"
        assert documented[name] == block, f"README.md's usage of `plankton {name}` differs from --help: run `make docs`"


def test_generated_usage_lists_every_option_of_the_help():
    usage = _readme_usage()
    commands = usage._commands()
    for name, command in commands.items():
        block = usage.usage(name, command)
        for param in command.params:
            if (
                getattr(param, "opts", None)
                and param.name not in usage.COMMON
                and not getattr(param, "hidden", False)
                and param.param_type_name == "option"
            ):
                assert max(param.opts, key=len) in block, f"{name}: {param.opts} missing from its README usage"


def test_a_drifted_readme_is_caught():
    usage = _readme_usage()
    text = (ROOT / "README.md").read_text()
    documented = usage.readme_blocks(text)
    name = next(iter(usage.blocks()))
    drifted = text.replace(documented[name], documented[name] + " [--no-such-option 1]", 1)
    assert usage.readme_blocks(drifted)[name] != usage.blocks()[name]
