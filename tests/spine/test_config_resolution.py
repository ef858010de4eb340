"""Config resolution: dataclass defaults < YAML file < flags; unknown keys and bad types are bad input."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from plankton_core.config import config_dict, load_config
from plankton_core.errors import BadInputError


@dataclass
class Demo:
    size: int = 224
    rate: float = 0.5
    name: str = "resnet"
    cosine: bool = False
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    epochs: Optional[int] = None
    workers: int = field(default=0, metadata={"digest": False})

    def validate(self) -> None:
        if self.size < 1:
            raise BadInputError("size must be >= 1")


def yaml_file(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_then_yaml_then_flags(tmp_path):
    assert load_config(Demo) == Demo()
    cfg_path = yaml_file(tmp_path, "size: 64\nrate: 0.1\nname: vit\n")
    cfg = load_config(Demo, cfg_path, {"rate": 0.2, "name": None})
    assert (cfg.size, cfg.rate, cfg.name) == (64, 0.2, "vit")  # YAML over defaults, flags over YAML, None = not typed
    assert cfg.cosine is False and cfg.split == (0.7, 0.15, 0.15)


def test_yaml_keys_may_use_dashes_like_flags(tmp_path):
    @dataclass
    class Dashed:
        max_bad_fraction: float = 0.05

    cfg = load_config(Dashed, yaml_file(tmp_path, "max-bad-fraction: 0.2\n"))
    assert cfg.max_bad_fraction == 0.2


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(BadInputError, match=r"unknown config option\(s\) for Demo: colour, sizes$"):
        load_config(Demo, yaml_file(tmp_path, "sizes: 3\ncolour: red\n"))
    with pytest.raises(BadInputError, match="unknown config option.*: lr"):
        load_config(Demo, None, {"lr": 0.1})


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("size", "32", 32),
        ("size", 32.0, 32),
        ("rate", "0.25", 0.25),
        ("rate", 1, 1.0),
        ("name", 50, "50"),
        ("cosine", "yes", True),
        ("cosine", "off", False),
        ("cosine", True, True),
        ("cosine", 1, True),
        ("split", "0.8, 0.1,0.1", (0.8, 0.1, 0.1)),
        ("split", [0.8, 0.1, 0.1], (0.8, 0.1, 0.1)),
        ("epochs", "10", 10),
    ],
)
def test_values_are_coerced_to_the_field_type(key, value, expected):
    cfg = load_config(Demo, None, {key: value})
    assert getattr(cfg, key) == expected and type(getattr(cfg, key)) is type(expected)


@pytest.mark.parametrize(
    "key, value",
    [
        ("size", "big"),
        ("size", 3.5),
        ("size", True),
        ("rate", "fast"),
        ("cosine", "maybe"),
        ("cosine", 2),
        ("split", "0.7,x,0.2"),
        ("name", ["a", "b"]),
        ("epochs", "ten"),
    ],
)
def test_values_of_the_wrong_type_are_named(key, value):
    with pytest.raises(BadInputError, match=rf"config option {key}: cannot read"):
        load_config(Demo, None, {key: value})


def test_yaml_value_of_the_wrong_type_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="config option size: cannot read 'huge' as int"):
        load_config(Demo, yaml_file(tmp_path, "size: huge\n"))


def test_bad_yaml_files(tmp_path):
    with pytest.raises(BadInputError, match="config file not found: .*nope.yaml"):
        load_config(Demo, tmp_path / "nope.yaml")
    with pytest.raises(BadInputError, match="cannot parse config file"):
        load_config(Demo, yaml_file(tmp_path, "size: [1, 2\n"))
    with pytest.raises(BadInputError, match="must hold a mapping"):
        load_config(Demo, yaml_file(tmp_path, "- 1\n- 2\n"))
    assert load_config(Demo, yaml_file(tmp_path, "")) == Demo()  # an empty file is no options


def test_validate_runs_after_resolution():
    with pytest.raises(BadInputError, match="size must be >= 1"):
        load_config(Demo, None, {"size": 0})


def test_config_dict_is_plain_data():
    d = config_dict(load_config(Demo, None, {"size": 8}))
    assert d["size"] == 8 and d["workers"] == 0 and list(d["split"]) == [0.7, 0.15, 0.15]


# --- through a real stage command ------------------------------------------------------------


def test_cli_config_errors_exit_2_with_one_line(tmp_path, run_cli):
    root = str(tmp_path / "root")
    result = run_cli("stats", "--root", root, "--config", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and result.stderr.startswith("plankton stats: error: config file not found")
    result = run_cli("stats", "--root", root, "--config", yaml_file(tmp_path, "sise: 3\n"))
    assert result.exit_code == 2
    assert result.stderr.strip() == "plankton stats: error: unknown config option(s) for StatsConfig: sise"
    result = run_cli("stats", "--root", root, "--size", "big")  # click's own usage errors are exit 2 too
    assert result.exit_code == 2 and "Invalid value for '--size'" in result.stderr
