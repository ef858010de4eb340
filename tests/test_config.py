"""Options declared once (plankton_core.config) and the click flags generated from them (jobs/_common.py).

Resolution: declared defaults < YAML file < flags; unknown keys and bad types or bounds are bad input (exit 2).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import click
import pytest

from plankton_core.config import (
    config_dict,
    digestable_config,
    from_recorded,
    load_config,
    option,
    option_specs,
    stage_config,
    trajectory_fields,
)
from plankton_core.errors import BadInputError
from plankton_core.stage import Stage, StageContext, register, stages, unregister

SEEN: list = []  # the configs the demo stage's body received


@stage_config
class DemoConfig:
    fast: bool = option(True, "Take the short path.")
    mode: Literal["plain", "fancy"] = option("plain", "How to draw.")
    sizes: tuple[int, ...] = option((32, 64), "Sizes to try.")
    level: int = option(3, "Effort level.", ge=1, le=5)
    ratio: float = option(0.5, "Share kept.", gt=0, lt=1)
    label: str = option("x", "A name.")
    threads: int = option(0, "Threads; 0 = automatic.", ge=0, digest=False)
    secret: int = option(7, "Not shown in --help.", hidden=True)
    renamed: str = option("", "An option with its own flag.", flag="--other-name")

    def validate(self) -> None:
        if self.mode == "fancy" and not self.fast:
            raise BadInputError("--mode fancy needs --fast")


def demo_body(cfg: DemoConfig, ctx: StageContext) -> dict:
    SEEN.append(cfg)
    return {}


@pytest.fixture
def demo():
    SEEN.clear()
    stage = register(Stage(name="demo-config", prefix="demo-config", config=DemoConfig, body=demo_body))
    yield stage
    unregister("demo-config")


def run_demo(run_cli, tmp_path, *args: str):
    result = run_cli("demo-config", "--root", str(tmp_path / "root"), "--force", *args)
    return result, (SEEN[-1] if SEEN and result.exit_code == 0 else None)


def help_text(run_cli, name: str) -> str:
    result = run_cli(name, "--help")
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())


def test_specs_carry_the_declaration():
    specs = {s.name: s for s in option_specs(DemoConfig)}
    assert [s.name for s in option_specs(DemoConfig)] == [f.name for f in dataclasses.fields(DemoConfig)]
    assert (
        specs["fast"].kind == "bool" and specs["mode"].kind == "choice" and specs["mode"].choices == ("plain", "fancy")
    )
    assert specs["sizes"].kind == "list" and specs["sizes"].item_type is int and specs["sizes"].default == (32, 64)
    assert specs["level"].bounds == {"ge": 1, "le": 5} and specs["ratio"].bounds == {"gt": 0, "lt": 1}
    assert specs["threads"].digest is False and specs["level"].digest is True
    assert specs["renamed"].flag == "--other-name" and specs["secret"].hidden


def test_help_lists_every_generated_option_with_its_default(demo, run_cli):
    text = help_text(run_cli, "demo-config")
    assert "--fast / --no-fast Take the short path. [True]" in text
    assert re.search(r"--mode \[plain\|fancy\] How to draw\. \[plain\]", text)
    assert "--sizes TEXT Sizes to try. Repeatable. [32,64]" in text
    assert "--level INTEGER Effort level. [3]" in text
    assert "--other-name TEXT An option with its own flag." in text
    assert "--secret" not in text


def test_defaults_when_nothing_is_given(demo, run_cli, tmp_path):
    result, cfg = run_demo(run_cli, tmp_path)
    assert result.exit_code == 0, result.output
    assert cfg == DemoConfig()


def test_bool_flags_both_ways(demo, run_cli, tmp_path):
    assert run_demo(run_cli, tmp_path, "--no-fast")[1].fast is False
    assert run_demo(run_cli, tmp_path, "--fast")[1].fast is True


def test_literal_is_a_choice(demo, run_cli, tmp_path):
    assert run_demo(run_cli, tmp_path, "--mode", "fancy")[1].mode == "fancy"
    result, _ = run_demo(run_cli, tmp_path, "--mode", "odd")
    assert (
        result.exit_code == 2 and "Invalid value for '--mode'" in result.stderr and "'plain', 'fancy'" in result.stderr
    )


def test_tuple_is_a_comma_list(demo, run_cli, tmp_path):
    assert run_demo(run_cli, tmp_path, "--sizes", "8, 16,24")[1].sizes == (8, 16, 24)
    assert run_demo(run_cli, tmp_path, "--sizes", "8", "--sizes", "16,24")[1].sizes == (8, 16, 24)  # repeatable
    result, _ = run_demo(run_cli, tmp_path, "--sizes", "8,big")
    assert result.exit_code == 2 and result.stderr.startswith("plankton demo-config: error: option --sizes: ")


def test_hidden_and_renamed_options_are_settable(demo, run_cli, tmp_path):
    cfg = run_demo(run_cli, tmp_path, "--secret", "9", "--other-name", "y")[1]
    assert cfg.secret == 9 and cfg.renamed == "y"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--level", "0"], "--level"),
        (["--level", "6"], "--level"),
        (["--ratio", "1"], "--ratio"),
        (["--ratio", "0"], "--ratio"),
        (["--threads", "-2"], "--threads"),
        (["--other-name", "1", "--level", "9"], "--level"),
    ],
)
def test_out_of_bounds_is_one_line_exit_2_naming_the_flag(demo, run_cli, tmp_path, args, flag):
    result, _ = run_demo(run_cli, tmp_path, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"plankton demo-config: error: option {flag}: "), result.stderr
    assert not SEEN  # the body never ran


def test_cross_field_validation_is_one_line_exit_2(demo, run_cli, tmp_path):
    result, _ = run_demo(run_cli, tmp_path, "--mode", "fancy", "--no-fast")
    assert result.exit_code == 2 and result.stderr.strip() == "plankton demo-config: error: --mode fancy needs --fast"


def test_yaml_below_flags(demo, run_cli, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("level: 4\nmode: fancy\nsizes: [1, 2]\nrenamed: from-yaml\n")  # YAML keys are the field names
    result, cfg = run_demo(run_cli, tmp_path, "--config", str(path), "--level", "2")
    assert result.exit_code == 0, result.output
    assert cfg.level == 2 and cfg.mode == "fancy" and cfg.sizes == (1, 2)  # the flag wins, YAML fills the rest
    assert cfg.renamed == "from-yaml"
    assert load_config(DemoConfig, path, {"level": None}).level == 4  # None = flag not typed


def test_unknown_yaml_key_is_exit_2(demo, run_cli, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("level: 4\nbogus: 1\n")
    result, _ = run_demo(run_cli, tmp_path, "--config", str(path))
    assert result.exit_code == 2
    assert result.stderr.strip() == "plankton demo-config: error: unknown config option(s) for DemoConfig: bogus"


def test_digest_leaves_out_digest_false_options_and_recorded_configs_come_back():
    cfg = DemoConfig(threads=4, level=2)
    assert "threads" not in digestable_config(cfg) and digestable_config(cfg)["level"] == 2
    recorded = dataclasses.asdict(cfg) | {"retired_option": 1}
    assert from_recorded(DemoConfig, recorded) == cfg  # options no longer declared are dropped
    assert from_recorded(DemoConfig, None) == DemoConfig()


def test_trajectory_fields_are_the_options_declared_so():
    @stage_config
    class Training:
        epochs: int = option(10, "Epochs.", trajectory=True)
        workers: int = option(2, "Threads.", digest=False)
        lr: float = option(0.1, "Learning rate.", trajectory=True)

    @stage_config
    class MoreTraining(Training):
        queue: int = option(64, "Queue.", trajectory=True)

    assert trajectory_fields(Training) == ("epochs", "lr")
    assert set(trajectory_fields(MoreTraining)) == {"epochs", "lr", "queue"}
    assert trajectory_fields(DemoConfig) == ()


def test_training_stages_resume_only_on_the_same_trajectory():
    """What `--resume auto` compares: each training stage's declared trajectory, runtime options never."""
    from plankton_core.detect.config import DetectConfig
    from plankton_core.pretrain.config import PretrainConfig
    from plankton_core.supcon.config import SupConConfig

    for cls in (SupConConfig, PretrainConfig, DetectConfig):
        fields = set(trajectory_fields(cls))
        assert {"model", "batch_size", "momentum", "weight_decay", "seed"} <= fields, cls.__name__
        assert not fields & {"resume", "device", "workers", "amp", "deterministic", "compile"}, cls.__name__
        assert all(spec.digest for spec in option_specs(cls) if spec.name in fields), cls.__name__


def test_assignment_is_validated_too():
    cfg = DemoConfig()
    with pytest.raises(ValueError):
        cfg.level = 99


def registered_options() -> list[tuple[str, object]]:
    return [(stage.name, spec) for stage in stages() for spec in option_specs(stage.config)]


@pytest.mark.parametrize(("stage", "spec"), registered_options(), ids=lambda v: getattr(v, "name", v))
def test_every_registered_config_field_has_a_flag(run_cli, stage, spec):
    """Every field of every registered stage's config is settable by flag (and listed in --help unless hidden)."""
    from jobs.cli import cli

    command = cli.get_command(click.Context(cli), stage)
    params = {p.name: p for p in command.params}
    assert spec.name in params, f"{stage}: field {spec.name} has no flag"
    assert spec.flag in params[spec.name].opts
    if not spec.hidden:
        text = help_text(run_cli, stage)
        shown = f"{spec.flag} / --no-{spec.flag[2:]}" if spec.kind == "bool" else spec.flag
        assert shown in text, f"{stage} --help lacks {shown}"
        assert spec.help.split(".")[0] in text, f"{stage} --help lacks the help of {spec.flag}"


# ---- resolution without the CLI (moved from tests/spine/test_config_resolution.py) ----


@stage_config
class Demo:
    size: int = option(224, "Size.")
    rate: float = option(0.5, "Rate.")
    name: str = option("resnet", "Name.")
    cosine: bool = option(False, "Cosine.")
    split: tuple[float, float, float] = option((0.7, 0.15, 0.15), "Split.")
    epochs: int | None = option(None, "Epochs.")
    workers: int = option(0, "Workers.", digest=False)

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
    @stage_config
    class Dashed:
        max_bad_fraction: float = option(0.05, "Fraction.")

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
        ("rate", False),
        ("cosine", "maybe"),
        ("cosine", 2),
        ("split", "0.7,x,0.2"),
        ("name", ["a", "b"]),
        ("epochs", "ten"),
    ],
)
def test_values_of_the_wrong_type_are_named(key, value):
    with pytest.raises(BadInputError, match=rf"^option --{key}: .*\(got .+\)$"):
        load_config(Demo, None, {key: value})


def test_yaml_value_of_the_wrong_type_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match=r"option --size: Input should be a valid integer.*\(got 'huge'\)"):
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


def test_cli_config_errors_exit_2_with_one_line(tmp_path, run_cli):
    root = str(tmp_path / "root")
    result = run_cli("stats", "--root", root, "--config", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and result.stderr.startswith("plankton stats: error: config file not found")
    result = run_cli("stats", "--root", root, "--config", yaml_file(tmp_path, "sise: 3\n"))
    assert result.exit_code == 2
    assert result.stderr.strip() == "plankton stats: error: unknown config option(s) for StatsConfig: sise"
    result = run_cli("stats", "--root", root, "--size", "big")  # click's own usage errors are exit 2 too
    assert result.exit_code == 2 and "Invalid value for '--size'" in result.stderr
