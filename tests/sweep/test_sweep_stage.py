"""The linear-sweep stage through the CLI, on a local folder and on the S3 server."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn import metrics as skm
from sweep.sweep_fixtures import make_supcon_root

from plankton_core.checkpoint import load_checkpoint, model_from_checkpoint
from plankton_core.data import ImageCache, load_splits
from plankton_core.features import extract_features
from plankton_core.store import open_store
from plankton_core.sweep.select import selection_key

torch.set_num_threads(1)
HEAD = ["--head-epochs", "12"]
CHECKPOINTS = ["epoch_0002", "epoch_0004", "epoch_0006", "last"]


def parquet(store, key):
    return pq.read_table(io.BytesIO(store.read_bytes(key)))


def test_sweep_writes_features_heads_table_plot_and_selection(root_uri, run_cli):
    store = make_supcon_root(root_uri)
    result = run_cli("linear-sweep", "--root", root_uri, *HEAD)
    assert result.exit_code == 0, result.output
    assert "linear-sweep: done" in result.stdout and "chosen" in result.stdout

    sweep = parquet(store, "sweep/sweep.parquet").to_pylist()
    assert [r["checkpoint"] for r in sweep] == CHECKPOINTS
    assert list(parquet(store, "sweep/sweep.parquet").column_names[:6]) == [
        "checkpoint",
        "epoch",
        "val_acc",
        "val_macro_f1",
        "best_head_epoch",
        "seconds",
    ]
    assert [r["epoch"] for r in sweep] == [2, 4, 6, 6]
    assert all(1 <= r["best_head_epoch"] <= 12 and 0 <= r["val_acc"] <= 1 for r in sweep)

    # features: row-aligned with their key table, equal to a direct extraction through the checkpoint
    val = load_splits(store, "val")
    keys = val.column("crop_key").to_pylist()
    rows = parquet(store, "sweep/features/epoch_0004/val.parquet")
    assert rows.column("crop_key").to_pylist() == keys
    assert rows.column("label").to_pylist() == val.column("label").to_pylist()
    feats = np.load(io.BytesIO(store.read_bytes("sweep/features/epoch_0004/val.npy")))
    ckpt = load_checkpoint(store, "supcon/ckpt/epoch_0004.pt")
    model = model_from_checkpoint(ckpt)
    direct = extract_features(
        model, ImageCache.build(store, keys, 32), ckpt["config"]["mean"], ckpt["config"]["std"], device="cpu"
    )
    np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-5)
    assert feats.shape == (len(keys), model.feature_dim)

    # the saved head is a plain state dict + meta, weights_only, and reproduces the recorded val accuracy on
    # those features
    head = torch.load(io.BytesIO(store.read_bytes("sweep/heads/epoch_0004.pt")), weights_only=True)
    pred = (torch.from_numpy(feats) @ head["state_dict"]["weight"].T + head["state_dict"]["bias"]).argmax(1).numpy()
    row = next(r for r in sweep if r["checkpoint"] == "epoch_0004")
    assert float((pred == np.asarray(val.column("label"))).mean()) == pytest.approx(row["val_acc"])
    assert head["meta"]["best_head_epoch"] == row["best_head_epoch"]

    # selection: the rule's maximum over the table, with the fields downstream stages read
    selection = json.loads(store.read_bytes("sweep/selection.json"))
    best = max(sweep, key=selection_key)
    for key in (
        "checkpoint",
        "checkpoint_key",
        "epoch",
        "head_key",
        "feature_dim",
        "model",
        "val_acc",
        "val_macro_f1",
        "best_head_epoch",
    ):
        assert selection[key] == best[key], key
    assert selection["checkpoint_key"] == f"supcon/ckpt/{best['checkpoint']}.pt" and selection["model"] == "test_resnet"

    md = store.read_bytes("sweep/sweep.md").decode()
    for r in sweep:
        assert f"| {100 * r['val_acc']:.2f}% / {r['best_head_epoch']} |" in md.replace("**", "")
    assert store.read_bytes("sweep/sweep.png")[:4] == b"\x89PNG"
    assert store.exists("sweep/_SUCCESS")

    again = run_cli("linear-sweep", "--root", root_uri, *HEAD)
    assert again.exit_code == 0 and "up to date" in again.stdout


def test_checkpoint_range_and_reuse_of_finished_heads(tmp_path, run_cli):
    root = str(tmp_path / "root")
    store = make_supcon_root(root)
    assert run_cli("linear-sweep", "--root", root, "--checkpoints", "4:", *HEAD).exit_code == 0
    assert [r["checkpoint"] for r in parquet(store, "sweep/sweep.parquet").to_pylist()] == [
        "epoch_0004",
        "epoch_0006",
        "last",
    ]
    before = parquet(store, "sweep/sweep.parquet").to_pylist()
    # widening the list trains only the new checkpoint; the others' heads are reused as they were
    assert run_cli("linear-sweep", "--root", root, "--checkpoints", "all", *HEAD).exit_code == 0
    after = {r["checkpoint"]: r for r in parquet(store, "sweep/sweep.parquet").to_pylist()}
    assert set(after) == set(CHECKPOINTS)
    for r in before:
        assert after[r["checkpoint"]] == r
    # another head setting reuses the cached features (no backbone pass) but retrains the heads
    assert run_cli("linear-sweep", "--root", root, "--head-lr", "0.1", *HEAD).exit_code == 0
    assert all(r["features_reused"] for r in parquet(store, "sweep/sweep.parquet").to_pylist())


def test_augmented_head_mode_trains_through_the_backbone(tmp_path, run_cli):
    root = str(tmp_path / "root")
    store = make_supcon_root(root, epochs=(2,), last=False)
    result = run_cli("linear-sweep", "--root", root, "--head-mode", "augmented", "--head-epochs", "3")
    assert result.exit_code == 0, result.output
    (row,) = parquet(store, "sweep/sweep.parquet").to_pylist()
    assert row["head_mode"] == "augmented" and 1 <= row["best_head_epoch"] <= 3
    assert not store.exists("sweep/features/epoch_0002/meta.json")  # nothing cached in this mode
    assert json.loads(store.read_bytes("sweep/selection.json"))["head_mode"] == "augmented"


def test_shards_then_merge_equal_one_unsharded_run(root_uri, run_cli, tmp_path):
    store = make_supcon_root(root_uri)
    env = {"NUM_SHARDS": "2"}
    first = run_cli("linear-sweep", "--root", root_uri, *HEAD, env={**env, "JOB_COMPLETION_INDEX": "0"})
    assert first.exit_code == 0, first.output
    assert store.exists("sweep/shards/0-of-2.parquet") and not store.exists("sweep/_SUCCESS")
    early = run_cli("linear-sweep", "--root", root_uri, *HEAD, "--merge")
    assert early.exit_code == 3 and "missing shard index(es) 1" in early.stderr
    second = run_cli("linear-sweep", "--root", root_uri, *HEAD, "--shard-index", "1", "--num-shards", "2")
    assert second.exit_code == 0, second.output
    assert not store.exists("sweep/_SUCCESS")
    assert store.exists("sweep/shards/1-of-2.json")  # the part's record, written after its rows
    other = run_cli("linear-sweep", "--root", root_uri, "--merge")  # the merge takes the shards' options
    assert other.exit_code == 2 and "head_epochs 12 vs 100 now" in other.stderr, other.stderr
    merged = run_cli("linear-sweep", "--root", root_uri, *HEAD, "--merge")
    assert merged.exit_code == 0, merged.output
    assert store.exists("sweep/_SUCCESS") and store.exists("sweep/selection.json") and store.exists("sweep/sweep.md")
    sharded = {r["checkpoint"]: r for r in parquet(store, "sweep/sweep.parquet").to_pylist()}

    whole_root = str(tmp_path / "whole")
    whole_store = make_supcon_root(whole_root)
    assert run_cli("linear-sweep", "--root", whole_root, *HEAD).exit_code == 0
    whole = {r["checkpoint"]: r for r in parquet(whole_store, "sweep/sweep.parquet").to_pylist()}
    assert set(sharded) == set(whole) == set(CHECKPOINTS)
    for name in CHECKPOINTS:
        for key in ("epoch", "val_acc", "val_macro_f1", "best_head_epoch"):
            assert sharded[name][key] == pytest.approx(whole[name][key]), (name, key)
    assert (
        json.loads(store.read_bytes("sweep/selection.json"))["checkpoint"]
        == json.loads(whole_store.read_bytes("sweep/selection.json"))["checkpoint"]
    )
    # the merged sweep counts as up to date for a rerun of the shards with the same settings
    rerun = run_cli("linear-sweep", "--root", root_uri, *HEAD, env={**env, "JOB_COMPLETION_INDEX": "1"})
    assert rerun.exit_code == 0 and "up to date" in rerun.stdout


def test_missing_checkpoint_is_bad_input(tmp_path, run_cli):
    root = str(tmp_path / "root")
    make_supcon_root(root, epochs=(2, 4), last=False)
    result = run_cli("linear-sweep", "--root", root, "--checkpoints", "2,9")
    assert result.exit_code == 2
    assert (
        "plankton linear-sweep: error: --checkpoints: no checkpoint for epoch 9 under supcon/ckpt/ (have epochs 2, 4)"
        in result.stderr
    )


def test_corrupt_checkpoint_is_bad_input_and_earlier_results_stay(root_uri, run_cli):
    store = make_supcon_root(root_uri, epochs=(2, 4), last=False)
    assert run_cli("linear-sweep", "--root", root_uri, *HEAD).exit_code == 0
    kept = {
        k: store.read_bytes(k)
        for k in ("sweep/sweep.parquet", "sweep/selection.json", "sweep/features/epoch_0002/train.npy")
    }
    head = torch.load(io.BytesIO(store.read_bytes("sweep/heads/epoch_0002.pt")), weights_only=True)["state_dict"]
    good = store.read_bytes("supcon/ckpt/epoch_0004.pt")
    store.write_bytes("supcon/ckpt/epoch_0004.pt", good[: len(good) // 3])
    result = run_cli("linear-sweep", "--root", root_uri, "--force", *HEAD)
    assert result.exit_code == 2
    assert "checkpoint(s) could not be used" in result.stderr and "epoch_0004.pt is corrupt" in result.stderr
    for key, data in kept.items():
        assert store.read_bytes(key) == data, key
    again = torch.load(io.BytesIO(store.read_bytes("sweep/heads/epoch_0002.pt")), weights_only=True)["state_dict"]
    assert torch.equal(again["weight"], head["weight"])  # the good checkpoint's head was redone (--force), identically
    assert not store.exists("sweep/_SUCCESS")
    # leaving it out works, as the message says
    assert run_cli("linear-sweep", "--root", root_uri, "--checkpoints", "2", *HEAD).exit_code == 0


def test_refuses_without_supcon(tmp_path, run_cli):
    from pipeline_fixtures import make_stats_root

    root = str(tmp_path / "root")
    make_stats_root(root)
    result = run_cli("linear-sweep", "--root", root)
    assert result.exit_code == 3 and "upstream stage 'supcon' has not finished" in result.stderr


def test_bad_head_setting_is_bad_input(tmp_path, run_cli):
    root = str(tmp_path / "root")
    make_supcon_root(root, epochs=(2,), last=False)
    result = run_cli("linear-sweep", "--root", root, "--head-lr", "-1")
    assert result.exit_code == 2 and "option --head-lr: Input should be greater than 0 (got -1" in result.stderr
    assert not open_store(root).exists("sweep/run.json")


def test_select_by_records_every_rules_choice_and_its_head(tmp_path, run_cli):
    root = str(tmp_path / "root")
    store = make_supcon_root(root, epochs=(2, 4), last=False)
    result = run_cli("linear-sweep", "--root", root, *HEAD, "--select-by", "balanced_accuracy")
    assert result.exit_code == 0, result.output
    assert "chosen by val balanced_accuracy" in result.stdout
    sel = json.loads(store.read_bytes("sweep/selection.json"))
    assert sel["select_by"] == "balanced_accuracy" and set(sel["by_rule"]) == {
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
    }
    assert sel["head_key"] == sel["by_rule"]["balanced_accuracy"]["head_key"] and sel["head_key"].endswith(
        ".balanced_accuracy.pt"
    )
    sweep = parquet(store, "sweep/sweep.parquet").to_pylist()
    val_y = np.asarray(load_splits(store, "val").column("label"))
    for r in sweep:
        feats = torch.from_numpy(np.load(io.BytesIO(store.read_bytes(f"sweep/features/{r['checkpoint']}/val.npy"))))
        for rule in ("accuracy", "balanced_accuracy", "macro_f1"):
            # each rule's saved head reproduces the val scores recorded for it, and no head epoch beats it on its rule
            head = torch.load(io.BytesIO(store.read_bytes(r[f"by_{rule}_head_key"])), weights_only=True)
            pred = (feats @ head["state_dict"]["weight"].T + head["state_dict"]["bias"]).argmax(1).numpy()
            assert skm.balanced_accuracy_score(val_y, pred) == pytest.approx(r[f"by_{rule}_val_balanced_accuracy"])
            assert skm.f1_score(val_y, pred, average="macro") == pytest.approx(r[f"by_{rule}_val_macro_f1"])
            per_epoch = [e[rule] for e in head["meta"]["val_per_epoch"]]
            assert r[f"by_{rule}_val_{rule}"] == pytest.approx(max(per_epoch))
            assert r[f"by_{rule}_head_epoch"] == 1 + per_epoch.index(max(per_epoch))
    best = max(sweep, key=lambda r: r["by_balanced_accuracy_val_balanced_accuracy"])
    assert (
        sel["by_rule"]["balanced_accuracy"]["val_balanced_accuracy"]
        == best["by_balanced_accuracy_val_balanced_accuracy"]
    )
    assert "| balanced_accuracy |" in store.read_bytes("sweep/sweep.md").decode()

    # another rule: new selection (not "up to date"), the heads reused
    heads = sorted((tmp_path / "root" / "sweep" / "heads").iterdir())
    assert len(heads) == 6
    stamps = [h.stat().st_mtime_ns for h in heads]
    again = run_cli("linear-sweep", "--root", root, *HEAD, "--select-by", "macro_f1")
    assert again.exit_code == 0 and "up to date" not in again.stdout and "chosen by val macro_f1" in again.stdout
    assert [h.stat().st_mtime_ns for h in heads] == stamps
    assert json.loads(store.read_bytes("sweep/selection.json"))["select_by"] == "macro_f1"
