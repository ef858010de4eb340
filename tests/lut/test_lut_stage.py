"""The lut stage on the local store and the S3 server: outputs, alignment, references for every figure, bad inputs."""

from __future__ import annotations

import io

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from lut_fixtures import CKPT_KEY, make_lut_upstream
from pipeline_fixtures import fake_checkpoint, finish_stage

from plankton_core.artifacts import EVAL_METRICS, LUT_INDEX_JSON, LUT_PRUNE_PLOT, LUT_RETRIEVAL
from plankton_core.checkpoint import save_checkpoint
from plankton_core.data import load_crop
from plankton_core.embedding import load_embedder
from plankton_core.lut import LutConfig
from plankton_core.lut.prune import greedy_order
from plankton_core.scoring import classification_metrics
from plankton_core.store import open_store
from plankton_core.tables import read_json, read_npy, read_parquet, write_json, write_npy, write_parquet

torch.set_num_threads(2)


def naive_predict(q, q_src, g, g_labels, g_src, k, method, n_classes):
    """Brute-force kNN in float64, leaving the query's own source out."""
    preds = []
    for i in range(len(q)):
        sims = g.astype(np.float64) @ q[i].astype(np.float64)
        order = [j for j in np.argsort(-sims, kind="stable") if g_src[j] != q_src[i]][:k]
        if method == "top1":
            preds.append(g_labels[order[0]])
        else:
            votes = np.zeros(n_classes)
            for j in order:
                votes[g_labels[j]] += max(sims[j], 0)
            preds.append(int(np.argmax(votes)))
    return np.array(preds)


def test_build_outputs_are_aligned_and_figures_match_references(built_lut):
    store = open_store(built_lut.uri, built_lut.endpoint)
    assert built_lut.result.counts["gallery"] == 54  # train + val of 3 × 24 crops
    gallery = read_parquet(store, "lut/gallery.parquet")
    assert gallery.column_names == ["id", "crop_key", "class", "label", "split", "source_key", "x0", "y0", "x1", "y1"]
    assert gallery.column("id").to_pylist() == list(range(54))
    assert set(gallery.column("split").to_pylist()) == {"train", "val"}
    manifest = {r["crop_key"]: r for r in read_parquet(store, "crop/manifest.parquet").to_pylist()}
    for row in gallery.to_pylist()[:5]:  # boxes come from the crop manifest
        assert (row["x0"], row["y0"], row["x1"], row["y1"]) == tuple(
            manifest[row["crop_key"]][c] for c in ("x0", "y0", "x1", "y1")
        )

    # row i of the index, of embeddings.npy and of gallery.parquet are the same crop: re-embed a few by hand
    index = faiss.deserialize_index(np.frombuffer(store.read_bytes("lut/index.faiss"), dtype=np.uint8))
    emb = read_npy(store, "lut/embeddings.npy")
    assert index.ntotal == emb.shape[0] == 54 and index.d == emb.shape[1] == 96
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    embedder = load_embedder(store)
    for i in (0, 17, 53):
        crop = load_crop(store, gallery.column("crop_key")[i].as_py(), 32)
        x = (
            torch.from_numpy(crop).permute(2, 0, 1).float()[None] / 255 - torch.tensor(embedder.mean).view(1, 3, 1, 1)
        ) / torch.tensor(embedder.std).view(1, 3, 1, 1)
        with torch.no_grad():
            f = embedder.model.encode(x)[0].numpy()
        np.testing.assert_allclose(emb[i], f / np.linalg.norm(f), atol=1e-4)
        np.testing.assert_allclose(index.reconstruct(i), emb[i], atol=1e-6)

    info = read_json(store, "lut/index.json")
    for key in (
        "backbone",
        "checkpoint",
        "dimension",
        "count",
        "index_type",
        "build_seconds",
        "weights_sha256",
        "recall",
    ):
        assert key in info
    assert (info["backbone"], info["checkpoint"], info["dimension"], info["count"], info["index_type"]) == (
        "test_resnet",
        CKPT_KEY,
        96,
        54,
        "flat",
    )

    # retrieval on test, against brute force with the same leave-source-out rule
    heldout = read_parquet(store, "lut/heldout.parquet")
    assert set(heldout.column("split").to_pylist()) == {"test"}
    test_x = read_npy(store, "lut/heldout.npy")
    y = np.array(heldout.column("label").to_pylist())
    g_labels = np.array(gallery.column("label").to_pylist())
    g_src, q_src = (
        np.array(gallery.column("source_key").to_pylist()),
        np.array(heldout.column("source_key").to_pylist()),
    )
    retrieval = read_json(store, "lut/retrieval.json")
    names = [r["name"] for r in retrieval["rows"]]
    assert names[:2] == ["top-1, full index", "5-NN weighted vote, full index"] and len(names) == 4
    for row, method in zip(retrieval["rows"][:2], ("top1", "weighted")):
        want = classification_metrics(y, naive_predict(test_x, q_src, emb, g_labels, g_src, 5, method, 3), 3)
        assert row["metrics"]["accuracy"] == pytest.approx(want["accuracy"])
        assert row["metrics"]["macro_f1"] == pytest.approx(want["macro_f1"])
    assert retrieval["prune"]["threshold"] == info["pruned"]["threshold"]
    for row in retrieval["rows"]:  # every headline figure carries its 95% interval
        m, iv = row["metrics"], row["intervals"]["overall"]
        for name in ("accuracy", "macro_f1", "balanced_accuracy"):
            assert iv[name]["low"] <= m[name] <= iv[name]["high"], (row["name"], name)
        assert "top5_accuracy" not in m and "top5_accuracy" not in iv  # 3 classes: 100% by construction

    # the chosen T's effect on test: full vs pruned (top-1, the sweep's vote), by brute force
    pruned_ids = np.array(read_parquet(store, "lut/gallery_pruned.parquet").column("full_id").to_pylist())
    full_pred = naive_predict(test_x, q_src, emb, g_labels, g_src, 5, "top1", 3)
    pruned_pred = naive_predict(test_x, q_src, emb[pruned_ids], g_labels[pruned_ids], g_src[pruned_ids], 5, "top1", 3)
    effect = retrieval["prune_effect"]
    assert (effect["split"], effect["vote"], effect["threshold"], effect["count"]) == (
        "test",
        "top1",
        info["pruned"]["threshold"],
        len(y),
    )
    acc = effect["metrics"]["accuracy"]
    assert acc["full"] == pytest.approx((full_pred == y).mean()) and acc["pruned"] == pytest.approx(
        (pruned_pred == y).mean()
    )
    assert effect["within_interval"] == (acc["full_ci"][0] <= acc["pruned"] <= acc["full_ci"][1])
    assert effect["metrics"]["macro_f1"]["pruned"] == pytest.approx(
        classification_metrics(y, pruned_pred, 3)["macro_f1"]
    )
    assert effect["metrics"]["worst_class_recall"]["full"] == pytest.approx(
        min(((full_pred == y) & (y == c)).sum() / (y == c).sum() for c in range(3))
    )


def naive_pruned(emb, labels, keys, t):
    rank = greedy_order(keys)
    kept, out = {}, np.zeros(len(emb), bool)
    for i in np.argsort(rank):
        mine = kept.setdefault(labels[i], [])
        if all(min(float(emb[i].astype(np.float64) @ emb[j].astype(np.float64)), 1.0) <= t for j in mine):
            mine.append(i)
            out[i] = True
    return out


def no_change_bound(n: int, z: float = 1.6448536269514722) -> float:
    """Tango's one-sided 95% upper bound of a paired accuracy loss when no item of n differs: z² / (n + z²)."""
    return z * z / (n + z * z)


def test_prune_sweep_choice_and_pruned_index(built_lut):
    store = open_store(built_lut.uri, built_lut.endpoint)
    sweep = read_parquet(store, "lut/prune_sweep.parquet")
    assert sweep.column_names == [
        "threshold",
        "gallery_size",
        "fraction_kept",
        "val_accuracy",
        "val_macro_f1",
        "query_latency_ms",
        "chosen",
        "val_balanced_accuracy",
        "val_loss",
        "val_loss_low",
        "val_loss_high",
        "val_accuracy_loss_high",
        "largest_class_recall_drop",
        "recall_drop_label",
        "eligible",
    ]
    assert (
        sweep.num_rows == 21
        and sweep.column("threshold")[0].as_py() == 0.8
        and sweep.column("threshold")[-1].as_py() == 1.0
    )
    rows = sweep.to_pylist()
    gallery = read_parquet(store, "lut/gallery.parquet")
    emb = read_npy(store, "lut/embeddings.npy")
    labels = np.array(gallery.column("label").to_pylist())
    keys = np.array(gallery.column("crop_key").to_pylist())
    split = np.array(gallery.column("split").to_pylist())
    src = np.array(gallery.column("source_key").to_pylist())
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    # the sweep's gallery is train only (36 of the 54 gallery items), never val
    assert rows[-1]["gallery_size"] == len(train) == 36 and rows[-1]["fraction_kept"] == 1.0
    assert all(r["query_latency_ms"] > 0 for r in rows)
    for r in rows[::4]:  # sizes agree with the naive pairwise pruning of train alone
        assert r["gallery_size"] == naive_pruned(emb[train], labels[train], keys[train].tolist(), r["threshold"]).sum()

    # every row against brute force: val queried against the pruned train gallery, own source left out
    full_pred = naive_predict(emb[val], src[val], emb[train], labels[train], src[train], 5, "top1", 3)
    summary = read_json(store, "lut/retrieval.json")["prune"]
    assert summary["val_accuracy_full"] == pytest.approx(float((full_pred == labels[val]).mean()))
    for r in rows:
        kept = train[naive_pruned(emb[train], labels[train], keys[train].tolist(), r["threshold"])]
        pred = naive_predict(emb[val], src[val], emb[kept], labels[kept], src[kept], 5, "top1", 3)
        assert r["val_accuracy"] == pytest.approx(float((pred == labels[val]).mean()))
        if r["fraction_kept"] == 1.0:  # the unpruned train gallery: no loss, nothing to bound
            assert (r["val_loss"], r["val_loss_low"], r["val_loss_high"]) == (0.0, 0.0, 0.0)
        else:
            lost = int(((full_pred == labels[val]) & (pred != labels[val])).sum())
            gained = int(((full_pred != labels[val]) & (pred == labels[val])).sum())
            assert r["val_loss"] == pytest.approx((lost - gained) / len(val))
            assert r["val_loss_high"] >= r["val_loss"] >= r["val_loss_low"]
            if lost == gained == 0:
                assert r["val_loss_high"] == pytest.approx(no_change_bound(len(val)), abs=1e-9)
        drops = [(full_pred[labels[val] == c] == c).mean() - (pred[labels[val] == c] == c).mean() for c in range(3)]
        assert r["largest_class_recall_drop"] == pytest.approx(max(max(drops), 0.0))
        assert r["eligible"] == (r["val_loss_high"] <= 0.01 + 1e-12 and r["largest_class_recall_drop"] <= 0.10 + 1e-12)
    ok = [r for r in rows if r["eligible"]]
    smallest = min(r["gallery_size"] for r in ok)
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["gallery_size"] == smallest
    assert chosen[0]["threshold"] == max(r["threshold"] for r in ok if r["gallery_size"] == smallest)
    assert (summary["select_by"], summary["alpha"], summary["min_class_recall"], summary["sweep_gallery"]) == (
        "accuracy",
        0.05,
        0.1,
        "train",
    )
    # the rule, its margin and the chosen T's val loss with its interval, in retrieval.json and index.json
    assert summary["max_loss"] == 0.01 and summary["bound"].startswith("Tango")
    assert summary["val_loss"] == chosen[0]["val_loss"]
    assert summary["val_loss_interval"] == [chosen[0]["val_loss_low"], chosen[0]["val_loss_high"]]
    assert summary["val_loss_interval"][1] <= summary["max_loss"]
    rule = read_json(store, LUT_INDEX_JSON)["pruned"]["rule"]
    assert (rule["max_loss"], rule["alpha"], rule["level"], rule["select_by"]) == (0.01, 0.05, 0.95, "accuracy")
    assert (rule["val_loss"], rule["val_loss_interval"]) == (summary["val_loss"], summary["val_loss_interval"])
    # 18 val items cannot bound any loss within 1 point (z²/(18 + z²) = 13 points with no item changed): nothing
    # is pruned, and the test split sees the unpruned index twice
    assert len(val) == 18 and all(not r["eligible"] for r in rows if r["fraction_kept"] < 1.0)
    assert chosen[0]["threshold"] == 1.0 and summary["gallery_pruned"] == summary["gallery_full"]
    effect = read_json(store, LUT_RETRIEVAL)["prune_effect"]
    assert effect["metrics"]["accuracy"]["difference"] == 0.0 and effect["within_interval"] is True

    # the written pruned LUT is the whole gallery (train + val) pruned at the chosen T
    pruned = read_parquet(store, "lut/gallery_pruned.parquet")
    want = np.flatnonzero(naive_pruned(emb, labels, keys.tolist(), chosen[0]["threshold"]))
    assert pruned.column("full_id").to_pylist() == want.tolist()
    assert pruned.column("id").to_pylist() == list(range(len(want)))
    assert summary["gallery_pruned"] == len(want) and summary["gallery_full"] == 54
    index = faiss.deserialize_index(np.frombuffer(store.read_bytes("lut/index_pruned.faiss"), dtype=np.uint8))
    assert index.ntotal == len(want)
    np.testing.assert_allclose(index.reconstruct(0), emb[want[0]], atol=1e-6)
    assert store.read_bytes("lut/prune_sweep.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_sql_friendly_parquet_and_run_record(built_lut):
    store = open_store(built_lut.uri, built_lut.endpoint)
    run = read_json(store, "lut/run.json")
    assert run["counts"]["gallery"] == 54 and store.exists("lut/_SUCCESS")
    assert pq.read_table(io.BytesIO(store.read_bytes("lut/gallery.parquet"))).schema.field("label").type == "int64"


def test_rerun_is_up_to_date_and_retrieval_json_feeds_the_report(root_uri, run_cli, monkeypatch, s3_server):
    """retrieval.json and prune_sweep.png hold the report's retrieval section; evaluate's folder is never touched."""
    if root_uri.startswith("s3://"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    store = make_lut_upstream(root_uri, per_class=12)
    finish_stage(
        store,
        "evaluate",
        {"fabricated": True},
        lambda cfg, ctx: write_json(store, EVAL_METRICS, classification_metrics([0, 1], [0, 0], 3)) or {},
    )
    evaluate_before = {key: store.read_bytes(key) for key in store.list("evaluate")}
    res = run_cli("lut", "--root", root_uri)
    assert res.exit_code == 0, res.output
    assert {
        key: store.read_bytes(key) for key in store.list("evaluate")
    } == evaluate_before  # no report.html patched in
    retrieval = read_json(store, LUT_RETRIEVAL)
    names = [r["name"] for r in retrieval["rows"]]
    assert "top-1, full index" in names and any(n.startswith("top-1, pruned index (T=") for n in names)
    assert retrieval["prune"]["threshold"] == read_json(store, LUT_INDEX_JSON)["pruned"]["threshold"]
    assert store.read_bytes(LUT_PRUNE_PLOT)[:8] == b"\x89PNG\r\n\x1a\n"
    assert store.exists("lut/index_pruned.faiss") and store.exists("lut/prune_sweep.parquet")
    res = run_cli("lut", "--root", root_uri, "--no-prune")  # config changed: rebuilt, and no stale pruned LUT is left
    assert res.exit_code == 0 and "up to date" not in res.output
    assert (
        not store.exists("lut/index_pruned.faiss")
        and not store.exists("lut/gallery_pruned.parquet")
        and not store.exists("lut/prune_sweep.parquet")
    )
    assert not store.exists(LUT_PRUNE_PLOT)
    retrieval = read_json(store, LUT_RETRIEVAL)
    assert "prune" not in retrieval and not any("pruned index" in r["name"] for r in retrieval["rows"])
    again = run_cli("lut", "--root", root_uri, "--no-prune")
    assert again.exit_code == 0 and "up to date" in again.output


@pytest.mark.parametrize("kind,param", [("ivf", "nprobe"), ("hnsw", "efSearch")])
def test_approximate_index_records_recall(tmp_path, run_cli, kind, param):
    root = str(tmp_path / "artifacts")
    make_lut_upstream(root, per_class=12)
    res = run_cli("lut", "--root", root, "--index", kind, "--gallery-splits", "train")
    assert res.exit_code == 0, res.output
    store = open_store(root)
    info = read_json(store, "lut/index.json")
    assert info["index_type"] == kind and param in info["search_params"]
    assert (
        0.0 <= info["recall"]["recall_at_1"] <= 1.0
        and "recall_at_10" in info["recall"]
        and info["recall"]["queries"] > 0
    )
    assert info["gallery_splits"] == ["train"] and info["count"] == 18
    assert set(read_parquet(store, "lut/heldout.parquet").column("split").to_pylist()) == {"val", "test"}
    index = faiss.deserialize_index(np.frombuffer(store.read_bytes("lut/index.faiss"), dtype=np.uint8))
    assert index.ntotal == 18


def test_unknown_gallery_split_is_refused_before_outputs_are_touched(tmp_path, run_cli):
    root = str(tmp_path / "artifacts")
    store = make_lut_upstream(root, per_class=8)
    assert run_cli("lut", "--root", root, "--no-prune").exit_code == 0
    res = run_cli("lut", "--root", root, "--gallery-splits", "train,holdout")
    assert res.exit_code == 2
    assert "gallery split(s) holdout have no rows" in res.stderr and "(splits there: test, train, val)" in res.stderr
    assert store.exists("lut/_SUCCESS") and store.exists("lut/index.faiss")  # the stage's check refused it first


def test_bad_options_exit_2(tmp_path, run_cli):
    root = str(tmp_path / "artifacts")
    make_lut_upstream(root, per_class=8)
    res = run_cli("lut", "--root", root, "--prune-min", "0.95", "--prune-max", "0.9")
    assert res.exit_code == 2 and "prune grid" in res.stderr
    res = run_cli("lut", "--root", root, "--index", "lsh")
    assert res.exit_code == 2


def test_missing_upstream_exit_3(tmp_path, run_cli):
    from pipeline_fixtures import make_stats_root

    root = str(tmp_path / "artifacts")
    make_stats_root(root, per_class=4)
    res = run_cli("lut", "--root", root)
    assert res.exit_code == 3 and "upstream stage 'supcon' has not finished" in res.stderr


def test_corrupt_checkpoint_exit_2(tmp_path, run_cli):
    root = str(tmp_path / "artifacts")
    store = make_lut_upstream(root, per_class=8)
    store.write_bytes(CKPT_KEY, b"not a checkpoint")
    res = run_cli("lut", "--root", root)
    assert res.exit_code == 2 and "corrupt or unsafe" in res.stderr


def test_named_checkpoint_is_used(tmp_path, run_cli):
    root = str(tmp_path / "artifacts")
    store = make_lut_upstream(root, per_class=8)
    stats = read_json(store, "stats/stats.json")
    save_checkpoint(store, "supcon/ckpt/epoch_0001.pt", fake_checkpoint(32, stats["mean"], stats["std"], seed=5))
    res = run_cli("lut", "--root", root, "--checkpoint", "supcon/ckpt/epoch_0001.pt", "--no-prune")
    assert res.exit_code == 0, res.output
    assert read_json(store, "lut/index.json")["checkpoint"] == "supcon/ckpt/epoch_0001.pt"
    res = run_cli("lut", "--root", root, "--checkpoint", "supcon/ckpt/epoch_0042.pt")
    assert res.exit_code == 2 and "checkpoint not found" in res.stderr


def test_config_defaults_and_yaml(tmp_path):
    from plankton_core.config import load_config
    from plankton_core.errors import BadInputError

    cfg = LutConfig()
    assert (
        cfg.gallery_splits == ("train", "val")
        and cfg.index == "flat"
        and (cfg.prune_min, cfg.prune_max, cfg.prune_step) == (0.8, 1.0, 0.01)
    )
    yaml_file = tmp_path / "lut.yaml"
    yaml_file.write_text("gallery_splits: [train]\nindex: hnsw\n")
    assert load_config(LutConfig, yaml_file, {"k": 3}).gallery_splits == ("train",)
    with pytest.raises(BadInputError, match="option --vote"):
        load_config(LutConfig, None, {"vote": "majority"})
    with pytest.raises(BadInputError, match="prune_candidates"):
        load_config(LutConfig, None, {"k": 20, "prune_candidates": 10})


def test_every_option_has_a_flag(run_cli):
    from plankton_core.config import option_specs

    res = run_cli("lut", "--help")
    assert res.exit_code == 0
    for spec in option_specs(LutConfig):
        assert spec.flag in res.output, spec.flag
    assert "--prune / --no-prune" in res.output and "[0.99]" in res.output


def test_reuses_linear_sweep_features_only_when_they_match(tmp_path, run_cli):
    root = str(tmp_path / "artifacts")
    store = make_lut_upstream(root, per_class=8)
    assert run_cli("lut", "--root", root, "--no-prune").exit_code == 0
    truth = read_npy(store, "lut/embeddings.npy")
    gallery = read_parquet(store, "lut/gallery.parquet")
    split = np.array(gallery.column("split").to_pylist())

    def fabricate(features_of):
        for s in ("train", "val"):
            rows = np.flatnonzero(split == s)
            write_npy(store, f"sweep/features/epoch_0003/{s}.npy", features_of(rows))
            write_parquet(
                store,
                f"sweep/features/epoch_0003/{s}.parquet",
                gallery.select(["crop_key", "class", "label"]).take(rows),
            )
        write_json(store, "sweep/features/epoch_0003/meta.json", {"fingerprint": {}})

    fabricate(lambda rows: 3.0 * truth[rows])  # linear-sweep stores unnormalised features
    res = run_cli("lut", "--root", root, "--no-prune", "--force")
    assert res.exit_code == 0 and "reused linear-sweep's train, val features of epoch_0003 (18 crops" in res.output
    np.testing.assert_allclose(read_npy(store, "lut/embeddings.npy"), truth, atol=1e-6)
    assert read_json(store, "lut/run.json")["counts"]["gallery"] == 18

    fabricate(lambda rows: np.random.default_rng(0).standard_normal((len(rows), truth.shape[1])).astype(np.float32))
    res = run_cli("lut", "--root", root, "--no-prune", "--force")
    assert res.exit_code == 0 and "disagree with the checkpoint" in res.output
    np.testing.assert_allclose(read_npy(store, "lut/embeddings.npy"), truth, atol=1e-5)


def test_sweep_queries_val_against_train_even_when_train_is_not_in_the_gallery(tmp_path, run_cli):
    root = str(tmp_path / "artifacts")
    store = make_lut_upstream(root, per_class=12)
    res = run_cli(
        "lut", "--root", root, "--gallery-splits", "val,test", "--select-by", "macro_f1", "--bootstrap", "200"
    )
    assert res.exit_code == 0, res.output
    splits = read_parquet(store, "stats/splits.parquet").column("split").to_pylist()
    sweep = read_parquet(store, "lut/prune_sweep.parquet").to_pylist()
    assert sweep[-1]["gallery_size"] == splits.count("train")  # the sweep's gallery: train, embedded for it
    info = read_json(store, "lut/index.json")
    assert info["count"] == splits.count("val") + splits.count("test")  # the written LUT: the splits asked for
    prune = read_json(store, LUT_RETRIEVAL)["prune"]
    assert prune["select_by"] == "macro_f1" and prune["bound"].startswith("paired stratified bootstrap")
    assert prune["max_loss"] == 0.01 and len(prune["val_loss_interval"]) == 2
    assert prune["gallery_full"] == info["count"] and prune["sweep_gallery_full"] == splits.count("train")
