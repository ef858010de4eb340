"""--group-by: crops of one sample (or acquisition) never straddle splits; sample is the default when present."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pytest
from pipeline_fixtures import frames_spec, make_crop_root

from plankton_core.errors import BadInputError
from plankton_core.splitting import assign_splits
from plankton_core.stage import run_stage
from plankton_core.stats import StatsConfig
from plankton_core.stats.grouped import assign_grouped_splits
from plankton_core.tables import read_json, read_parquet, write_parquet


def test_multi_class_groups_stay_whole_and_shares_follow_the_fractions():
    rng = np.random.default_rng(0)
    classes, groups = [], []
    for g in range(60):  # 60 samples, each with a few of 4 taxa
        for c in rng.choice(4, size=int(rng.integers(1, 4)), replace=False):
            n = int(rng.integers(2, 12))
            classes += [f"c{c}"] * n
            groups += [f"s{g}"] * n
    assignment, missing = assign_grouped_splits(classes, groups, (0.7, 0.15, 0.15), seed=1)
    split = assignment.split
    per_group = defaultdict(set)
    for g, s in zip(groups, split.tolist()):
        per_group[g].add(s)
    assert all(len(s) == 1 for s in per_group.values())
    assert not missing
    for c in {*classes}:
        rows = [s for cc, s in zip(classes, split.tolist()) if cc == c]
        shares = np.bincount(rows, minlength=3) / len(rows)
        assert abs(shares[0] - 0.7) < 0.12 and shares[1] > 0.05 and shares[2] > 0.05, (c, shares)
    again, _ = assign_grouped_splits(classes, groups, (0.7, 0.15, 0.15), seed=1)
    assert (again.split == split).all()


def test_one_class_groups_split_exactly_as_before_and_missing_classes_are_named():
    classes = ["a"] * 10 + ["b"] * 10
    groups = [f"f{i}" for i in range(20)]
    new, missing = assign_grouped_splits(classes, groups, (0.6, 0.2, 0.2), seed=4)
    assert (new.split == assign_splits(classes, groups, (0.6, 0.2, 0.2), seed=4).split).all() and not missing
    classes = ["a", "a", "b", "a", "a", "b"]  # b lies in one sample only: it cannot reach val or test
    groups = ["s1", "s1", "s1", "s2", "s3", "s4"]
    assignment, missing = assign_grouped_splits(classes, groups, (0.5, 0.25, 0.25), seed=0)
    assert set(missing) <= {"b"} and missing.get("b") and len(missing["b"]) >= 1


def _with_ids(store, sample_of, acq=True):
    table = read_parquet(store, "crop/manifest.parquet")
    sources = table.column("source_key").to_pylist()
    table = table.append_column("sample_id", pa.array([sample_of(s) for s in sources], pa.string()))
    if acq:
        table = table.append_column(
            "acq_id", pa.array([f"{sample_of(s)}_a" if sample_of(s) else None for s in sources], pa.string())
        )
    write_parquet(store, "crop/manifest.parquet", table)


def test_stage_groups_by_sample_when_every_crop_has_one(tmp_path):
    store = make_crop_root(str(tmp_path / "root"), {"disc": frames_spec(12, [1, 2]), "bar": frames_spec(12, [2, 1])})

    def sample(source: str) -> str:  # frame i of every class lies in sample i % 6; rows not kept get one too
        digits = "".join(ch for ch in source.rsplit("/", 1)[-1] if ch.isdigit())
        return f"sample{int(digits or 0) % 6}"

    _with_ids(store, sample)
    result = run_stage("stats", StatsConfig(size=16, split=(0.5, 0.25, 0.25)), store)
    assert result.counts["group_by"] == "sample" and read_json(store, "stats/stats.json")["group_by"] == "sample"
    rows = read_parquet(store, "stats/splits.parquet").to_pylist()
    per_sample = defaultdict(set)
    for r in rows:
        per_sample[r["group"]].add(r["split"])
    assert len(per_sample) == 6 and all(len(s) == 1 for s in per_sample.values())
    assert set(Counter(r["split"] for r in rows)) == {"train", "val", "test"}
    by_source = run_stage("stats", StatsConfig(size=16, split=(0.5, 0.25, 0.25), group_by="source"), store)
    assert by_source.counts["group_by"] == "source"
    assert {r["group"] for r in read_parquet(store, "stats/splits.parquet").to_pylist()} == {
        r["source_key"] for r in rows
    }
    by_acq = run_stage("stats", StatsConfig(size=16, split=(0.5, 0.25, 0.25), group_by="acquisition"), store)
    assert by_acq.counts["group_by"] == "acquisition"


def test_auto_falls_back_to_source_and_an_explicit_grouping_needs_its_column(tmp_path, run_cli):
    store = make_crop_root(str(tmp_path / "root"), {"disc": frames_spec(8), "bar": frames_spec(8)})
    assert run_stage("stats", StatsConfig(size=16), store).counts["group_by"] == "source"  # no sample_id at all
    result = run_cli("stats", "--root", str(tmp_path / "root"), "--size", 16, "--group-by", "sample", "--force")
    assert result.exit_code == 2 and "--group-by sample needs sample_id" in result.stderr
    _with_ids(store, lambda s: "s1" if s.startswith("disc/") else None, acq=False)  # some crops without a sample
    assert run_stage("stats", StatsConfig(size=16), store, force=True).counts["group_by"] == "source"
    with pytest.raises(BadInputError, match="kept crop\\(s\\) have no sample_id"):
        run_stage("stats", StatsConfig(size=16, group_by="sample"), store, force=True)
