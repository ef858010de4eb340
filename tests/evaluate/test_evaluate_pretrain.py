"""evaluate flags test figures of a backbone whose pretraining saw the test images (`pretrain --include-test`):
metrics.json's `pretrain_saw_test` with a note, a warning line under the report's "Test results"."""

from __future__ import annotations

import json

import pytest
import torch
from pipeline_fixtures import finish_stage, make_stats_root
from sweep.sweep_fixtures import MODEL, checkpoint_dict

from plankton_core.checkpoint import save_checkpoint
from plankton_core.data import load_normalisation
from plankton_core.evaluate.stage import pretrain_exposure
from plankton_core.models import create_model
from plankton_core.pretrain.config import PretrainConfig
from plankton_core.store import LocalStore
from plankton_core.tables import read_json, write_json

torch.set_num_threads(1)


def supcon_from_pretrain(root: str, include_test: bool):
    """A finished pretrain run (fabricated: its run.json as the contract writes it) and supcon checkpoints that
    started from it (`--init pretrain` records the run's digest)."""
    store = make_stats_root(root)  # 3 classes × 24 crops, 18 of them in test
    counts = {"train_images": 72 if include_test else 54, "test_images_seen": 18 if include_test else 0}
    finish_stage(store, "pretrain", PretrainConfig(include_test=include_test), lambda cfg, ctx: counts)
    digest = read_json(store, "pretrain/run.json")["digest"]
    mean, std, size = load_normalisation(store)
    for epoch in (2, 4):
        torch.manual_seed(epoch)
        ckpt = checkpoint_dict(create_model(MODEL), epoch, size, mean, std)
        ckpt["config"] |= {"init": "pretrain", "pretrain_digest": digest}
        save_checkpoint(store, f"supcon/ckpt/epoch_{epoch:04d}.pt", ckpt)
    finish_stage(store, "supcon", {"fabricated": True, "init": "pretrain"}, lambda cfg, ctx: {"checkpoints": 2})
    return store


@pytest.mark.parametrize("include_test", [True, False])
def test_metrics_and_report_say_when_pretraining_saw_the_test_images(tmp_path, run_cli, include_test):
    root = str(tmp_path / "root")
    store = supcon_from_pretrain(root, include_test)
    assert run_cli("linear-sweep", "--root", root, "--head-epochs", "5").exit_code == 0
    result = run_cli("evaluate", "--root", root, "--bootstrap", "0")
    assert result.exit_code == 0, result.output
    m = json.loads(store.read_bytes("evaluate/metrics.json"))
    md = store.read_bytes("evaluate/report.md").decode()
    html = store.read_bytes("evaluate/report.html").decode()
    assert m["pretrain_saw_test"] is include_test
    if not include_test:
        assert "pretrain_test_note" not in m and "Warning" not in md and "Warning" not in html
        return
    assert m["pretrain_test_images"] == 18 and "--include-test" in m["pretrain_test_note"]
    assert "optimistic" in m["pretrain_test_note"] and "warning:" in result.output
    # a visible line right under the "Test results" heading, above the headline table
    warning = f"> **Warning:** {m['pretrain_test_note']}"
    assert md.index("## Test results") < md.index(warning) < md.index("bs / backbone epoch / head epoch")
    assert '<p class="warning">Warning: the backbone descends from a pretrain run with --include-test' in html


def test_exposure_from_a_pretrain_checkpoint_a_replaced_run_or_no_pretrain(tmp_path):
    store = LocalStore(tmp_path)
    probe = pretrain_exposure(store, "pretrain/ckpt/last.pt", {"include_test": True, "test_images_seen": 7})
    assert probe["pretrain_saw_test"] is True and probe["pretrain_test_images"] == 7
    assert pretrain_exposure(store, "pretrain/ckpt/last.pt", {"include_test": False, "test_images_seen": 0}) == {
        "pretrain_saw_test": False
    }
    # supcon started from a pretrain run that pretrain/run.json no longer records: unknown, and said so
    write_json(store, "pretrain/run.json", {"digest": "new", "config": {"include_test": False}, "counts": {}})
    replaced = pretrain_exposure(store, "supcon/ckpt/last.pt", {"init": "pretrain", "pretrain_digest": "old"})
    assert replaced["pretrain_saw_test"] is None and "unknown" in replaced["pretrain_test_note"]
    assert pretrain_exposure(store, "supcon/ckpt/last.pt", {"init": "random"}) == {"pretrain_saw_test": False}
