"""The stage framework end to end on a toy stage registered here: adding a stage is one registration.

The toy stage (and its toy upstream) get, with no other edit: a `plankton toy` command with
flags generated from the config, the contract (upstream, up to date, --force, shards and
--merge, ranks, check before anything is touched), and a Kubernetes Job.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from plankton_core.config import load_config, option, stage_config
from plankton_core.errors import BadInputError, UpstreamNotReadyError
from plankton_core.shards import PartRecord, ShardOutput, shard_of
from plankton_core.stage import RUN_JSON, SUCCESS, Stage, StageContext, register, run_stage, unregister
from plankton_core.store import open_store
from plankton_core.tables import read_json, read_parquet, write_json, write_parquet

NUMBERS = "toy/numbers.parquet"
SEED = "toy-seed/seed.json"


@stage_config
class ToySeedConfig:
    offset: int = option(100, "First number the toy stage writes.", ge=0)


@stage_config
class ToyConfig:
    count: int = option(6, "How many numbers to write.", ge=1, le=1000)
    workers: int = option(0, "Threads; changes nothing written.", ge=0, digest=False)


def seed_body(cfg: ToySeedConfig, ctx: StageContext) -> dict:
    write_json(ctx.root, ctx.key("seed.json"), {"offset": cfg.offset})
    return {"offset": cfg.offset}


def toy_check(cfg: ToyConfig, ctx: StageContext) -> int:
    """Validates the upstream's output before anything is touched; the plan is the offset."""
    offset = read_json(ctx.root, SEED)["offset"]
    if offset < 0:
        raise BadInputError(f"{SEED}: offset must be >= 0, got {offset}")
    return int(offset)


def numbers(cfg: ToyConfig, ctx: StageContext, index: int = 0, count: int = 1) -> pa.Table:
    values = [ctx.plan + i for i in range(cfg.count) if shard_of(str(i), count) == index]
    return pa.table({"n": pa.array(values, pa.int64())})


def toy_body(cfg: ToyConfig, ctx: StageContext) -> dict:
    table = numbers(cfg, ctx)
    if ctx.primary:  # DDP ranks > 0 compute and leave the writing to rank 0
        write_parquet(ctx.root, ctx.key("numbers.parquet"), table)
    return {"rows": table.num_rows}


def toy_shard(cfg: ToyConfig, ctx: StageContext, index: int, count: int) -> ShardOutput:
    table = numbers(cfg, ctx, index, count)
    return ShardOutput(rows=table, counts={"rows": table.num_rows}, extra={"sum": sum(table.column("n").to_pylist())})


def toy_merge(cfg: ToyConfig, ctx: StageContext, parts: list[PartRecord]) -> dict:
    tables = [read_parquet(ctx.root, p.rows_key) for p in parts if p.rows_key]
    table = pa.concat_tables(tables).sort_by("n")
    assert sum(p.extra["sum"] for p in parts) == sum(table.column("n").to_pylist())
    write_parquet(ctx.root, ctx.key("numbers.parquet"), table)
    return {"rows": table.num_rows}


SEED_STAGE = Stage(name="toy-seed", prefix="toy-seed", config=ToySeedConfig, body=seed_body, help="Toy upstream.")
TOY_STAGE = Stage(
    name="toy",
    prefix="toy",
    config=ToyConfig,
    body=toy_body,
    upstream=("toy-seed",),
    check=toy_check,
    shard=toy_shard,
    merge=toy_merge,
    help="Toy stage: numbers from the seed's offset.",
)


@pytest.fixture
def toy():
    """The two toy stages, registered for one test only."""
    register(SEED_STAGE)
    register(TOY_STAGE)
    yield TOY_STAGE
    unregister("toy")
    unregister("toy-seed")


@pytest.fixture
def root(tmp_path):
    return open_store(str(tmp_path / "root"))


@pytest.fixture
def seeded(toy, root):
    run_stage("toy-seed", ToySeedConfig(), root)
    return root


def written(root) -> list[int]:
    return read_parquet(root, NUMBERS).column("n").to_pylist()


# ---- the toy stage gets a command, the contract, sharding and a Job, with no other edit ----


def test_toy_stage_is_in_the_registry_in_pipeline_order(toy):
    from plankton_core.stage import get_stage, stages

    names = [s.name for s in stages()]
    assert names.index("toy-seed") < names.index("toy") and get_stage("toy") is toy


def test_toy_stage_gets_a_command_with_its_generated_options(toy, run_cli):
    result = run_cli("--help")
    assert "toy" in result.stdout and "toy-seed" in result.stdout
    result = run_cli("toy", "--help")
    assert result.exit_code == 0, result.output
    for flag in (
        "--count",
        "--workers",
        "--root",
        "--config",
        "--force",
        "--s3-endpoint",
        "--shard-index",
        "--num-shards",
        "--merge",
    ):
        assert flag in result.stdout, flag
    assert "How many numbers to write. [6]" in " ".join(result.stdout.split())


def test_toy_command_runs_then_is_up_to_date(toy, run_cli, tmp_path):
    root = str(tmp_path / "root")
    assert run_cli("toy-seed", "--root", root).exit_code == 0
    result = run_cli("toy", "--root", root, "--count", "4")
    assert result.exit_code == 0, result.output
    assert "toy: done in " in result.stdout and "(rows=4)" in result.stdout
    store = open_store(root)
    assert written(store) == [100, 101, 102, 103]
    recorded = read_json(store, "toy/run.json")
    assert recorded["config"] == {"count": 4, "workers": 0} and recorded["counts"] == {"rows": 4}
    assert recorded["inputs"] == {"toy-seed": read_json(store, "toy-seed/run.json")["digest"]}
    assert store.exists("toy/_SUCCESS")
    again = run_cli("toy", "--root", root, "--count", "4")
    assert again.exit_code == 0 and f"toy: up to date → {store.uri}/toy" in again.stdout


def test_toy_command_without_its_upstream_exits_3(toy, run_cli, tmp_path):
    result = run_cli("toy", "--root", str(tmp_path / "root"))
    assert result.exit_code == 3
    assert "plankton toy: error: upstream stage 'toy-seed' has not finished" in result.stderr
    assert "run `plankton toy-seed` first" in result.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--count", "0"], "--count"), (["--count", "1001"], "--count"), (["--workers", "-1"], "--workers")],
)
def test_toy_command_with_an_out_of_range_value_exits_2_on_one_line_naming_the_flag(toy, run_cli, tmp_path, args, flag):
    root = str(tmp_path / "root")
    run_cli("toy-seed", "--root", root)
    result = run_cli("toy", "--root", root, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"plankton toy: error: option {flag}: "), result.stderr
    assert not open_store(root).exists("toy/_SUCCESS")


def test_toy_command_with_a_value_of_the_wrong_type_exits_2_naming_the_flag(toy, run_cli, tmp_path):
    result = run_cli("toy", "--root", str(tmp_path / "root"), "--count", "many")
    assert result.exit_code == 2
    assert result.stderr == "plankton toy: error: Invalid value for '--count': 'many' is not a valid integer.\n"


def test_toy_shards_then_merge_equal_one_unsharded_run(toy, run_cli, tmp_path):
    plain, sharded = str(tmp_path / "plain"), str(tmp_path / "sharded")
    for root in (plain, sharded):
        assert run_cli("toy-seed", "--root", root).exit_code == 0
    assert run_cli("toy", "--root", plain, "--count", "9").exit_code == 0
    for index in (0, 1):
        result = run_cli("toy", "--root", sharded, "--count", "9", "--shard-index", str(index), "--num-shards", "2")
        assert result.exit_code == 0, result.output
        assert not open_store(sharded).exists("toy/_SUCCESS")  # a shard never finishes the stage
    result = run_cli("toy", "--root", sharded, "--count", "9", "--merge")
    assert result.exit_code == 0, result.output
    a, b = open_store(plain), open_store(sharded)
    assert written(a) == written(b) == list(range(100, 109))
    assert read_json(a, "toy/run.json")["digest"] == read_json(b, "toy/run.json")["digest"]
    assert b.exists("toy/_SUCCESS")
    # the merged outputs are the unsharded run's: a plain run now is up to date
    assert "toy: up to date" in run_cli("toy", "--root", sharded, "--count", "9").stdout


def test_toy_stage_renders_a_job_that_validates(toy):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    from plankton_core.jobspec import Settings, render_stage

    settings = Settings.load()
    assert "toy" in settings.stages and settings.pipeline.index("toy-seed") < settings.pipeline.index("toy")
    (job,) = render_stage(settings, "toy", "tj")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["metadata"]["name"] == "plankton-toy-tj" and container["args"] == ["toy"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]  # no section in stages.yaml: the defaults
    shards, merge = render_stage(Settings.load(None, (), ["shards=3", "args.count=9"]), "toy", "tj")
    assert shards["spec"]["completionMode"] == "Indexed" and shards["spec"]["completions"] == 3
    assert merge["spec"]["template"]["spec"]["containers"][0]["args"] == ["toy", "--count", "9", "--merge"]
    for doc in (job, shards, merge):
        kubernetes_validate.validate(doc, latest_version(), strict=True)
    with pytest.raises(BadInputError, match="toy-seed: is not shardable"):
        render_stage(Settings.load(None, (), ["shards=2"]), "toy-seed", "tj")


def test_a_gpu_distributed_stage_gets_gpus_and_torchrun_from_the_registry(toy):
    from plankton_core.jobspec import Settings, render_stage

    register(Stage(name="toy-gpu", prefix="toy-gpu", config=ToyConfig, body=toy_body, gpu=True, distributed=True))
    try:
        (job,) = render_stage(Settings.load(None, (), ["gpus=2"]), "toy-gpu", "tg")
    finally:
        unregister("toy-gpu")
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["containers"][0]["command"][:3] == ["plankton", "k8s", "torchrun"]
    with pytest.raises(BadInputError, match="toy: uses one GPU per pod"):
        render_stage(Settings.load(None, (), ["gpus=2"]), "toy", "tg")


# ---- the contract (run_stage) ----


def test_up_to_date_and_force(seeded):
    first = run_stage("toy", ToyConfig(count=3), seeded)
    assert not first.up_to_date and first.counts == {"rows": 3}
    again = run_stage("toy", ToyConfig(count=3), seeded)
    assert again.up_to_date and again.counts == {"rows": 3}
    run_id = read_json(seeded, "toy/run.json")["run_id"]
    forced = run_stage("toy", ToyConfig(count=3), seeded, force=True)
    assert not forced.up_to_date and read_json(seeded, "toy/run.json")["run_id"] != run_id
    changed = run_stage("toy", ToyConfig(count=4), seeded)
    assert not changed.up_to_date and written(seeded) == [100, 101, 102, 103]


def test_digest_ignores_options_declared_digest_false(seeded):
    run_stage("toy", ToyConfig(count=3, workers=0), seeded)
    assert run_stage("toy", ToyConfig(count=3, workers=8), seeded).up_to_date


def test_a_new_upstream_run_makes_the_stage_stale(seeded):
    run_stage("toy", ToyConfig(count=2), seeded)
    run_stage("toy-seed", ToySeedConfig(offset=5), seeded)
    assert not run_stage("toy", ToyConfig(count=2), seeded).up_to_date
    assert written(seeded) == [5, 6]


def test_upstream_missing_is_upstream_not_ready(toy, root):
    with pytest.raises(UpstreamNotReadyError, match="upstream stage 'toy-seed' has not finished") as exc:
        run_stage("toy", ToyConfig(), root)
    assert exc.value.exit_code == 3


def test_a_non_primary_rank_writes_no_records(seeded):
    result = run_stage("toy", ToyConfig(count=3), seeded, rank=1)
    assert not result.primary and result.counts == {"rows": 3}
    assert not seeded.exists("toy/run.json") and not seeded.exists("toy/_SUCCESS")
    assert list(seeded.list("toy")) == []  # no outputs, metrics or records either
    assert run_stage("toy", ToyConfig(count=3), seeded, rank=0).primary
    assert seeded.exists("toy/_SUCCESS")


def test_a_non_primary_rank_leaves_a_finished_stage_finished(seeded):
    run_stage("toy", ToyConfig(count=3), seeded)
    run_stage("toy", ToyConfig(count=3), seeded, rank=1, force=True)
    assert seeded.exists("toy/_SUCCESS")


def test_a_recorded_shard_part_is_up_to_date(seeded):
    first = run_stage("toy", ToyConfig(count=6), seeded, shard_index=1, num_shards=2)
    assert not first.up_to_date and first.uri.endswith("toy/shards/1-of-2.parquet")
    written_at = read_json(seeded, "toy/shards/1-of-2.json")["written_at"]
    again = run_stage("toy", ToyConfig(count=6), seeded, shard_index=1, num_shards=2)
    assert again.up_to_date and again.counts == first.counts
    assert read_json(seeded, "toy/shards/1-of-2.json")["written_at"] == written_at
    forced = run_stage("toy", ToyConfig(count=6), seeded, shard_index=1, num_shards=2, force=True)
    assert not forced.up_to_date and read_json(seeded, "toy/shards/1-of-2.json")["written_at"] != written_at


def test_the_shard_comes_from_the_indexed_job_environment(seeded, monkeypatch):
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("NUM_SHARDS", "3")
    run_stage("toy", ToyConfig(count=6), seeded)
    assert seeded.exists("toy/shards/1-of-3.json") and not seeded.exists("toy/_SUCCESS")


def test_a_shard_run_unfinishes_the_merged_stage(seeded):
    run_stage("toy", ToyConfig(count=6), seeded)
    run_stage("toy", ToyConfig(count=6), seeded, shard_index=0, num_shards=2, force=True)
    assert not seeded.exists("toy/_SUCCESS")  # the merged outputs are about to be superseded


def test_merge_refuses_an_incomplete_set_with_exit_3(seeded):
    run_stage("toy", ToyConfig(count=6), seeded, shard_index=0, num_shards=2)
    with pytest.raises(
        UpstreamNotReadyError, match=r"toy shards incomplete: 1 of 2 done, missing shard index\(es\) 1"
    ) as exc:
        run_stage("toy", ToyConfig(count=6), seeded, merge=True)
    assert exc.value.exit_code == 3
    assert not seeded.exists("toy/_SUCCESS")


def test_merge_with_no_parts_is_exit_3(seeded):
    with pytest.raises(UpstreamNotReadyError, match="no toy shard parts under"):
        run_stage("toy", ToyConfig(count=6), seeded, merge=True)


def test_merge_refuses_parts_of_another_config_with_exit_2(seeded):
    for index in (0, 1):
        run_stage("toy", ToyConfig(count=6), seeded, shard_index=index, num_shards=2)
    with pytest.raises(BadInputError, match=r"was made from a different config \(count 6 vs 7 now\)") as exc:
        run_stage("toy", ToyConfig(count=7), seeded, merge=True)
    assert exc.value.exit_code == 2
    assert not seeded.exists("toy/_SUCCESS")


def test_merge_refuses_parts_older_than_the_upstream_with_exit_3(seeded):
    for index in (0, 1):
        run_stage("toy", ToyConfig(count=6), seeded, shard_index=index, num_shards=2)
    run_stage("toy-seed", ToySeedConfig(offset=1), seeded)
    with pytest.raises(UpstreamNotReadyError, match="predates the current upstream run"):
        run_stage("toy", ToyConfig(count=6), seeded, merge=True)


def test_merge_of_a_stage_without_shards_is_bad_input(seeded):
    with pytest.raises(BadInputError, match="toy-seed is not sharded: --merge does not apply"):
        run_stage("toy-seed", ToySeedConfig(), seeded, merge=True)


def test_check_runs_before_success_is_touched(seeded):
    run_stage("toy", ToyConfig(count=3), seeded)
    write_json(seeded, SEED, {"offset": -1})  # an upstream output gone bad, under the same run.json
    for force in (False, True):
        with pytest.raises(BadInputError, match="offset must be >= 0"):
            run_stage("toy", ToyConfig(count=3), seeded, force=force)
        assert seeded.exists("toy/_SUCCESS") and written(seeded) == [100, 101, 102]
    with pytest.raises(BadInputError, match="offset must be >= 0"):
        run_stage("toy", ToyConfig(count=3), seeded, shard_index=0, num_shards=2)
    assert seeded.exists("toy/_SUCCESS") and not seeded.exists("toy/shards/0-of-2.json")


def test_a_failing_body_leaves_no_success(seeded):
    def broken(cfg, ctx):
        raise RuntimeError("boom")

    register(Stage(name="toy-broken", prefix="toy-broken", config=ToyConfig, body=broken))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            run_stage("toy-broken", ToyConfig(), seeded)
    finally:
        unregister("toy-broken")
    assert not seeded.exists("toy-broken/_SUCCESS") and not seeded.exists("toy-broken/run.json")


def test_run_json_records_what_the_contract_knows(seeded):
    run_stage("toy", load_config(ToyConfig, None, {"count": 2}), seeded)
    recorded = read_json(seeded, "toy/" + RUN_JSON)
    assert recorded["stage"] == "toy" and len(recorded["digest"]) == 64
    assert set(recorded) >= {
        "run_id",
        "config",
        "version",
        "git_commit",
        "inputs",
        "fingerprint",
        "counts",
        "timings",
        "host",
        "notes",
    }
    assert seeded.exists("toy/" + SUCCESS)


def test_registering_a_second_stage_on_a_used_name_or_prefix_fails(toy):
    with pytest.raises(ValueError, match="already registered"):
        register(Stage(name="toy", prefix="toy2", config=ToyConfig, body=toy_body))
    with pytest.raises(ValueError, match="would share the prefix 'toy'"):
        register(Stage(name="toy2", prefix="toy", config=ToyConfig, body=toy_body))


def test_pipeline_order_does_not_depend_on_which_stage_package_was_imported_first():
    import subprocess
    import sys

    code = (
        "import plankton_core.lut.retrieval, plankton_core.report; from plankton_core.stage import stages; "
        "print(' '.join(s.name for s in stages()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [
        "crop",
        "stats",
        "baseline",
        "pretrain",
        "supcon",
        "linear-sweep",
        "evaluate",
        "lut",
        "audit",
        "detect",
        "report",
        "classify",
    ]
