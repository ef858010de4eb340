"""The evaluate stage through the CLI, on a local folder and on the S3 server; the report; bad inputs."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from evaluate.evaluate_fixtures import finish_lut, swept
from sklearn import metrics as skm
from sweep.sweep_fixtures import checkpoint_dict, make_supcon_root

from plankton_core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from plankton_core.data import ImageCache, load_splits
from plankton_core.features import extract_features
from plankton_core.heads import save_head
from plankton_core.models import create_model
from plankton_core.store import open_store
from plankton_core.tables import write_json, write_parquet

torch.set_num_threads(1)


def parquet(store, key):
    return pq.read_table(io.BytesIO(store.read_bytes(key)))


def test_evaluate_writes_metrics_equal_to_sklearn_and_a_report(root_uri, run_cli):
    store = swept(root_uri, run_cli)
    result = run_cli("evaluate", "--root", root_uri)
    assert result.exit_code == 0, result.output
    assert "report.html" in result.stdout
    for key in (
        "metrics.json",
        "per_class.parquet",
        "predictions.parquet",
        "confusion.png",
        "report.html",
        "report.md",
        "_SUCCESS",
    ):
        assert store.exists(f"evaluate/{key}"), key

    # predictions: the chosen checkpoint + head, recomputed here directly
    selection = json.loads(store.read_bytes("sweep/selection.json"))
    test = load_splits(store, "test")
    keys = test.column("crop_key").to_pylist()
    ckpt = load_checkpoint(store, selection["checkpoint_key"])
    feats = extract_features(
        model_from_checkpoint(ckpt),
        ImageCache.build(store, keys, 32),
        ckpt["config"]["mean"],
        ckpt["config"]["std"],
        device="cpu",
    )
    head = torch.load(io.BytesIO(store.read_bytes(selection["head_key"])), weights_only=True)["state_dict"]
    probs = torch.softmax(
        torch.from_numpy(feats).double() @ head["weight"].double().T + head["bias"].double(), 1
    ).numpy()
    preds = parquet(store, "evaluate/predictions.parquet")
    assert preds.column_names[:4] == ["crop_key", "label", "pred", "score"]
    assert preds.column("crop_key").to_pylist() == keys
    y, p = np.asarray(preds.column("label")), np.asarray(preds.column("pred"))
    np.testing.assert_array_equal(y, np.asarray(test.column("label")))
    np.testing.assert_array_equal(p, probs.argmax(1))
    np.testing.assert_allclose(np.asarray(preds.column("score")), probs.max(1), rtol=1e-6)

    # every metric equals scikit-learn's on these predictions
    m = json.loads(store.read_bytes("evaluate/metrics.json"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(y, p, average=avg, zero_division=0)
        assert (m[f"{avg}_precision"], m[f"{avg}_recall"], m[f"{avg}_f1"]) == pytest.approx((pr, rc, f1))
    # 3 classes: top-5 is 100% by construction, so neither the figure nor an interval
    assert "top5_accuracy" not in m and "top5_accuracy" not in m["intervals"]
    assert m["pretrain_saw_test"] is False and "pretrain_test_note" not in m  # no pretrain run behind it
    assert m["count"] == len(keys) and m["counts"]["test"] == len(keys)
    assert sum(m["counts"]["per_class"].values()) == len(keys)
    assert (m["checkpoint"], m["backbone_epoch"], m["head_epoch"]) == (
        selection["checkpoint"],
        selection["epoch"],
        selection["best_head_epoch"],
    )

    per_class = parquet(store, "evaluate/per_class.parquet")
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, p, labels=np.arange(3), zero_division=0)
    np.testing.assert_allclose(np.asarray(per_class.column("precision")), pr)
    np.testing.assert_allclose(np.asarray(per_class.column("recall")), rc)
    np.testing.assert_allclose(np.asarray(per_class.column("f1")), f1)
    np.testing.assert_array_equal(np.asarray(per_class.column("support")), sup)

    # the report: self-contained HTML (images inline), the user's headline table, sweep, per-class, confusions
    html = store.read_bytes("evaluate/report.html").decode()
    md = store.read_bytes("evaluate/report.md").decode()
    assert html.count("data:image/png;base64,") == 2  # sweep plot + confusion matrix
    assert html.count("data:image/jpeg;base64,") >= 3  # crop thumbnails: at least a strip per class
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', html))  # nothing linked from outside
    headline = f"{100 * m['accuracy']:.2f}%"
    for text in (
        "bs / backbone epoch / head epoch",
        "F1 Score",
        "Network",
        "Per-class results",
        "Checkpoint sweep",
        "Worst confusions",
        headline,
    ):
        assert text in html and text in md, text
    acc = m["intervals"]["accuracy"]
    assert (
        f"| 32 / {m['backbone_epoch']} / {m['head_epoch']} "
        f"| {headline} ({100 * acc['low']:.1f}–{100 * acc['high']:.1f}) |" in md
    )
    assert "Examples per class" in html and "What each selection rule chose" in html
    assert "](../sweep/sweep.png)" in md and "](confusion.png)" in md
    assert "Retrieval (LUT)" not in html
    assert "| Top-5 accuracy |" not in md and "with 3 classes it is 100% by construction" in md
    assert "Warning" not in md

    again = run_cli("evaluate", "--root", root_uri)
    assert again.exit_code == 0 and "up to date" in again.stdout


def test_evaluate_report_gains_a_retrieval_section_once_lut_has_finished(tmp_path, run_cli):
    root = str(tmp_path / "root")
    store = swept(root, run_cli)
    finish_lut(store)  # lut finished before evaluate ran: evaluate's own report reads its outputs
    assert run_cli("evaluate", "--root", root).exit_code == 0
    html = store.read_bytes("evaluate/report.html").decode()
    md = store.read_bytes("evaluate/report.md").decode()
    for text in ("Retrieval (LUT)", "exact, top-1", "90.00%", "pruned T=0.93, kNN vote", "87.50%", "threshold", "0.93"):
        assert text in html and text in md, text
    assert html.count("data:image/png;base64,") == 3
    assert "](../lut/prune_sweep.png)" in md
    assert "Test results" in html  # the rest is still there


def test_evaluate_requires_the_merged_sweep(tmp_path, run_cli):
    """evaluate never merges linear-sweep's shards (nor writes under sweep/): `plankton linear-sweep --merge` does."""
    root = str(tmp_path / "root")
    store = make_supcon_root(root, epochs=(2, 4), last=False)
    for i in (0, 1):
        assert (
            run_cli(
                "linear-sweep", "--root", root, "--head-epochs", "5", "--shard-index", i, "--num-shards", "2"
            ).exit_code
            == 0
        )
    result = run_cli("evaluate", "--root", root)
    assert result.exit_code == 3 and "upstream stage 'linear-sweep' has not finished" in result.stderr
    assert (
        not store.exists("sweep/_SUCCESS")
        and not store.exists("sweep/selection.json")
        and not store.exists("evaluate/run.json")
    )
    assert run_cli("linear-sweep", "--root", root, "--head-epochs", "5", "--merge").exit_code == 0
    result = run_cli("evaluate", "--root", root)
    assert result.exit_code == 0, result.output
    assert store.exists("evaluate/_SUCCESS")


def test_evaluate_waits_for_missing_shards(tmp_path, run_cli):
    root = str(tmp_path / "root")
    make_supcon_root(root, epochs=(2, 4), last=False)
    assert (
        run_cli(
            "linear-sweep", "--root", root, "--head-epochs", "5", "--shard-index", "1", "--num-shards", "2"
        ).exit_code
        == 0
    )
    result = run_cli("evaluate", "--root", root)
    assert result.exit_code == 3 and "upstream stage 'linear-sweep' has not finished" in result.stderr
    merge = run_cli("linear-sweep", "--root", root, "--head-epochs", "5", "--merge")
    assert merge.exit_code == 3 and "missing shard index(es) 0" in merge.stderr
    # an unsharded run supersedes the partial shards
    assert run_cli("linear-sweep", "--root", root, "--head-epochs", "5").exit_code == 0
    assert not list(open_store(root).list("sweep/shards"))
    assert run_cli("evaluate", "--root", root).exit_code == 0


# --- bad inputs: a clear message, exit 2, and the previous results untouched -------------------------


def corrupt_checkpoint(store, selection):
    data = store.read_bytes(selection["checkpoint_key"])
    store.write_bytes(selection["checkpoint_key"], data[: len(data) // 2])


def delete_checkpoint(store, selection):
    store.delete(selection["checkpoint_key"])


def narrow_head(store, selection):
    meta = {"classes": ["disc", "bar", "cross"], "train_counts": [1, 1, 1]}
    save_head(store, selection["head_key"], {"weight": torch.zeros(3, 10), "bias": torch.zeros(3)}, meta)


def wider_checkpoint(store, selection):
    """A checkpoint of another architecture (wider features) under the chosen name, the head unchanged."""
    model = create_model("test_vit")
    ckpt = checkpoint_dict(model, 2, 32, [0.5] * 3, [0.25] * 3)
    ckpt["config"]["model"] = "test_vit"
    save_checkpoint(store, selection["checkpoint_key"], ckpt)


def unseen_test_class(store, selection):
    splits = parquet(store, "stats/splits.parquet").to_pylist()
    splits.append(
        {
            "crop_key": splits[0]["crop_key"],
            "class": "ring",
            "label": 3,
            "split": "test",
            "source_key": "images/ring/ring_0000.png",
        }
    )
    write_parquet(store, "stats/splits.parquet", pa.Table.from_pylist(splits))
    write_json(store, "stats/classes.json", {"classes": ["disc", "bar", "cross", "ring"]})


@pytest.mark.parametrize(
    "damage, message",
    [
        (delete_checkpoint, r"checkpoint .*supcon/ckpt/epoch_000\d\.pt chosen by the sweep is missing"),
        (corrupt_checkpoint, r"checkpoint .*supcon/ckpt/epoch_000\d\.pt is corrupt or unsafe"),
        (
            narrow_head,
            r"feature width mismatch: head sweep/heads/epoch_000\d\.pt takes 10 features but checkpoint .* gives 96",
        ),
        (unseen_test_class, r"the test split has 1 class\(es\) the model never saw in training: ring \(1 crops\)"),
    ],
    ids=["missing-checkpoint", "corrupt-checkpoint", "feature-width", "unseen-class"],
)
def test_bad_inputs_exit_2_and_keep_earlier_results(root_uri, run_cli, damage, message):
    import re

    store = swept(root_uri, run_cli)
    assert run_cli("evaluate", "--root", root_uri).exit_code == 0
    kept = {
        k: store.read_bytes(k)
        for k in ("evaluate/metrics.json", "evaluate/predictions.parquet", "evaluate/report.html", "evaluate/_SUCCESS")
    }
    damage(store, json.loads(store.read_bytes("sweep/selection.json")))
    result = run_cli("evaluate", "--root", root_uri, "--force")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("plankton evaluate: error: ")
    assert re.search(message, result.stderr), result.stderr
    for key, data in kept.items():
        assert store.exists(key) and store.read_bytes(key) == data, key


def test_head_that_does_not_fit_another_architecture(tmp_path, run_cli):
    root = str(tmp_path / "root")
    store = swept(root, run_cli)
    wider_checkpoint(store, json.loads(store.read_bytes("sweep/selection.json")))
    result = run_cli("evaluate", "--root", root)
    assert result.exit_code == 2
    assert "feature width mismatch" in result.stderr and "takes 96 features" in result.stderr


def test_refuses_before_the_sweep(tmp_path, run_cli):
    root = str(tmp_path / "root")
    make_supcon_root(root, epochs=(2,), last=False)
    result = run_cli("evaluate", "--root", root)
    assert result.exit_code == 3 and "upstream stage 'linear-sweep' has not finished" in result.stderr


def test_intervals_selections_and_classes_not_in_test(tmp_path, run_cli):
    root = str(tmp_path / "root")
    store = swept(root, run_cli)
    # a class too small to split: its crops all stay in train (as stats leaves it); the head still knows it
    splits = parquet(store, "stats/splits.parquet").to_pylist()
    for r in splits:
        if r["class"] == "cross":
            r["split"] = "train"
    write_parquet(store, "stats/splits.parquet", pa.Table.from_pylist(splits))
    result = run_cli("evaluate", "--root", root, "--bootstrap", "200", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert (
        "1 class(es) have no test crops" in result.stdout and "cross (" in result.stdout and "95% CI" in result.stdout
    )
    m = json.loads(store.read_bytes("evaluate/metrics.json"))
    c2 = [r for r in splits if r["class"] == "cross"]
    assert m["classes_not_in_test"] == [
        {
            "class": "cross",
            "crops": len(c2),
            "source_images": len({r["source_key"] for r in c2}),
            "train": len(c2),
            "val": 0,
        }
    ]
    assert m["bootstrap"]["reps"] == 200 and m["bootstrap"]["seed"] == 3
    for name in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "macro_precision",
        "macro_recall",
        "weighted_f1",
        "worst_class_recall",
    ):
        iv = m["intervals"][name]
        assert iv["low"] <= m[name] <= iv["high"], name
    assert m["intervals"]["accuracy"]["method"] == "wilson" and m["intervals"]["macro_f1"]["method"] == "bootstrap"

    per_class = parquet(store, "evaluate/per_class.parquet").to_pylist()
    for r in per_class:
        for name in ("precision", "recall", "f1"):
            assert r[f"{name}_low"] <= r[name] <= r[f"{name}_high"], (r["class"], name)

    # every rule's choice scored on test; the used one's figures are the headline's, the others recomputed here
    sel = json.loads(store.read_bytes("sweep/selection.json"))
    assert set(m["selections"]) == {"accuracy", "balanced_accuracy", "macro_f1"}
    used = m["selections"]["accuracy"]
    assert (
        used["used"]
        and used["test"]["accuracy"] == m["accuracy"]
        and used["chosen_on"] == "val"
        and used["scored_on"] == "test"
    )
    test = load_splits(store, "test")
    keys = test.column("crop_key").to_pylist()
    y = np.asarray(test.column("label"))
    for rule, entry in m["selections"].items():
        choice = sel["by_rule"][rule]
        assert (entry["checkpoint"], entry["head_epoch"]) == (choice["checkpoint"], choice["best_head_epoch"])
        ckpt = load_checkpoint(store, choice["checkpoint_key"])
        feats = extract_features(
            model_from_checkpoint(ckpt),
            ImageCache.build(store, keys, 32),
            ckpt["config"]["mean"],
            ckpt["config"]["std"],
            device="cpu",
        )
        head = torch.load(io.BytesIO(store.read_bytes(choice["head_key"])), weights_only=True)["state_dict"]
        p = (torch.from_numpy(feats).double() @ head["weight"].double().T + head["bias"].double()).argmax(1).numpy()
        assert entry["test"]["accuracy"] == pytest.approx(skm.accuracy_score(y, p)), rule
        assert entry["test"]["macro_f1"] == pytest.approx(
            skm.f1_score(y, p, average="macro", labels=sorted(set(y) | set(p)), zero_division=0)
        ), rule
        assert (
            entry["test_intervals"]["accuracy"]["low"]
            <= entry["test"]["accuracy"]
            <= entry["test_intervals"]["accuracy"]["high"]
        )

    html = store.read_bytes("evaluate/report.html").decode()
    md = store.read_bytes("evaluate/report.md").decode()
    for text in (
        "Classes not tested",
        "cross",
        "What each selection rule chose",
        "chosen on val",
        "95% intervals",
        "Worst class recall",
    ):
        assert text in html and text in md, text
