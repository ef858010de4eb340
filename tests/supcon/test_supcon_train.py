"""Training proof, exact stop-and-resume, fallback from a corrupt checkpoint, NaN handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_fixtures import make_stats_root
from supcon_helpers import (
    assert_same_weights,
    final_state,
    metrics_rows,
    one_nn_accuracy,
    sigterm_during_step,
    small_cfg,
    train,
)

from plankton_core.artifacts import SUPCON_CKPT
from plankton_core.checkpoint import list_checkpoints, model_from_checkpoint
from plankton_core.data import ImageCache, load_normalisation, load_splits
from plankton_core.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, InterruptedRun
from plankton_core.features import extract_features
from plankton_core.models import create_model
from plankton_core.supcon import stage as supcon_train
from plankton_core.training import TrainingDiverged

LAST = f"{SUPCON_CKPT}/last.pt"


def test_training_beats_random_init_on_nearest_neighbour_accuracy(tmp_path):
    store = make_stats_root(str(tmp_path / "root"), n_classes=5, per_class=24)  # 60 train, 30 val crops
    cfg = small_cfg(epochs=10, batch_size=30, save_every=100)
    train(cfg, store)

    losses = [row["loss"] for row in metrics_rows(store)]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < losses[0] - 0.5, losses

    mean, std, size = load_normalisation(store)

    def features(model, split):
        rows = load_splits(store, split)
        cache = ImageCache.build(store, rows.column("crop_key").to_pylist(), size)
        return extract_features(model, cache, mean, std, device="cpu"), np.asarray(rows.column("label").to_pylist())

    def accuracy(model):
        return one_nn_accuracy(*features(model, "train"), *features(model, "val"))

    torch.manual_seed(cfg.seed)  # the very initial weights training started from
    random_init = create_model(cfg.model)
    trained = model_from_checkpoint(final_state(store))
    acc_trained, acc_random = accuracy(trained), accuracy(random_init)
    assert acc_trained >= 0.9 and acc_trained >= acc_random + 0.1, (acc_trained, acc_random)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted deterministic CPU run: 4 epochs of 3 steps (18 train crops, batch 6), epoch_0002 and
    epoch_0004 kept."""
    base = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANKTON_CACHE_DIR", str(base / "cache"))
        mp.delenv("PUSHGATEWAY_URL", raising=False)
        store = make_stats_root(str(base / "root"), per_class=12)
        train(small_cfg(epochs=4, batch_size=6, save_every=2), store)
    return store


def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path, reference, monkeypatch):
    """Also: augmenting on two loader threads (here) trains exactly like augmenting inline (the reference)."""
    store = make_stats_root(str(tmp_path / "root"), per_class=12)
    cfg = small_cfg(epochs=4, batch_size=6, save_every=2, workers=2)
    sigterm_during_step(monkeypatch, 5)  # second epoch, its second of three steps
    with pytest.raises(InterruptedRun) as info:
        train(cfg, store)
    assert info.value.exit_code == EXIT_INTERRUPTED == 75
    assert "SIGTERM" in str(info.value) and "epoch 2 after step 2/3" in str(info.value)
    saved = final_state(store)
    assert (saved["epoch"], saved["step"]) == (1, 5)
    assert not store.exists("supcon/_SUCCESS")

    result = train(cfg, store)
    assert any(f"resumed from {LAST} (epoch 1, step 5)" in n for n in result.notes)
    assert_same_weights(final_state(store), final_state(reference))
    assert_same_weights(final_state(store, "epoch_0002"), final_state(reference, "epoch_0002"))
    ours, ref = metrics_rows(store), metrics_rows(reference)
    assert [r["epoch"] for r in ours] == [1, 2, 3, 4]
    assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in ref], rel=1e-6)
    assert store.exists("supcon/_SUCCESS")


def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, reference, monkeypatch):
    store = make_stats_root(str(tmp_path / "root"), per_class=12)
    cfg = small_cfg(epochs=4, batch_size=6, save_every=1)  # save_every does not change training
    sigterm_during_step(monkeypatch, 6)  # the last step of epoch 2: saved, then stops
    with pytest.raises(InterruptedRun) as info:
        train(cfg, store)
    assert "after epoch 2" in str(info.value)
    assert final_state(store)["epoch"] == 2
    data = store.read_bytes(LAST)
    store.write_bytes(LAST, data[: len(data) // 2])  # a torn write from some other tool

    result = train(cfg, store)
    notes = " ".join(result.notes)
    assert f"skipping unreadable checkpoint {LAST}" in notes
    assert "resumed from supcon/ckpt/epoch_0002.pt (epoch 2, step 6)" in notes
    assert_same_weights(final_state(store), final_state(reference))
    assert [name for name, _ in list_checkpoints(store)] == [
        "epoch_0001",
        "epoch_0002",
        "epoch_0003",
        "epoch_0004",
        "last",
    ]


def test_finished_run_with_an_unreadable_last_checkpoint_gets_it_back(tmp_path):
    store = make_stats_root(str(tmp_path / "root"), per_class=12)
    cfg = small_cfg(epochs=1, batch_size=6)
    train(cfg, store)
    store.write_bytes(LAST, b"garbage")
    result = train(cfg, store, force=True)
    assert "resumed from supcon/ckpt/epoch_0001.pt (epoch 1, step 3)" in " ".join(result.notes)
    assert_same_weights(final_state(store), final_state(store, "epoch_0001"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, run_cli):
    store = make_stats_root(str(tmp_path / "root"), per_class=12)
    real = supcon_train.contrastive_loss
    calls = {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 4 else loss  # epoch 1 (3 steps) is fine, epoch 2 diverges

    monkeypatch.setattr(supcon_train, "contrastive_loss", diverging)
    result = run_cli(
        "supcon",
        "--root",
        str(tmp_path / "root"),
        "--model",
        "test_resnet",
        "--epochs",
        "3",
        "--batch-size",
        "6",
        "--save-every",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
    )
    assert result.exit_code == EXIT_BAD_INPUT == TrainingDiverged.exit_code
    assert "plankton supcon: error: loss became NaN or infinite in epoch 2" in result.stderr
    assert "last good checkpoint is kept" in result.stderr
    assert "lower the learning rate (--base-lr)" in result.stderr
    assert final_state(store)["epoch"] == 1
    assert [name for name, _ in list_checkpoints(store)] == ["epoch_0001", "last"]
    assert not store.exists("supcon/_SUCCESS")
    assert 'plankton_supcon_loss{stage="supcon"} NaN' in store.read_bytes("supcon/metrics.prom").decode()
