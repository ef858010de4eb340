"""The shared Trainer on a toy task: checkpoints, metrics and gauges, exact resume after a stop, NaN, resume choice."""

from __future__ import annotations

import json
import math

import pytest
import torch
from training_toy import EPOCHS, METRICS, PREFIX, STEPS, context, fit, mse, stopping_at, toy_run

from plankton_core.checkpoint import checkpoint_key, list_checkpoints, load_checkpoint
from plankton_core.errors import EXIT_INTERRUPTED, BadInputError, InterruptedRun
from plankton_core.store import open_store
from plankton_core.training import StopRequest, Trainer, TrainingDiverged, choose_resume, epoch_gauges
from plankton_core.training.checkpoints import ResumePoint, find_resume

LAST = checkpoint_key("last", PREFIX)
CURRENT = {"lr": 0.05, "epochs": EPOCHS}


def resume(store, how: str = "auto", current: dict | None = None) -> ResumePoint:
    return choose_resume(store, PREFIX, how, current or CURRENT, ("lr", "epochs"))


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "root"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted toy run: its weights and metrics are what every resumed run must reproduce."""
    store = open_store(str(tmp_path_factory.mktemp("reference")))
    counts, model, _ = fit(store, ResumePoint())
    return store, counts, model


def rows(store) -> list[dict]:
    return [json.loads(line) for line in store.read_bytes(METRICS).decode().splitlines()]


def test_fit_writes_checkpoints_metrics_and_gauges(store):
    counts, model, trainer = fit(store, ResumePoint(), save_every=2)
    assert counts == {
        "epochs": EPOCHS,
        "steps": EPOCHS * STEPS,
        "final_loss": pytest.approx(counts["final_loss"]),
        "images_per_s": counts["images_per_s"],
        "resumed_from": None,
    }
    assert [name for name, _ in list_checkpoints(store, PREFIX)] == ["epoch_0002", "last"]
    ckpt = load_checkpoint(store, LAST)
    assert {
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "step",
        "rng",
        "config",
        "epoch_progress",
        "version",
        "kind",
    } <= ckpt.keys()
    assert (ckpt["epoch"], ckpt["step"], ckpt["kind"], ckpt["epoch_progress"]) == (EPOCHS, EPOCHS * STEPS, "toy", None)
    assert torch.equal(ckpt["model"]["weight"], model.weight.detach())
    lines = rows(store)
    assert [r["epoch"] for r in lines] == [1, 2, 3] and [r["step"] for r in lines] == [4, 8, 12]
    assert lines[-1]["loss"] < lines[0]["loss"] and counts["final_loss"] == round(lines[-1]["loss"], 6)
    prom = trainer.ctx.metrics.exposition().decode()
    for name in epoch_gauges("toy"):
        if name != "toy_peak_memory_bytes":  # GPU only
            assert f'plankton_{name}{{stage="toy"}}' in prom, name
    assert 'plankton_toy_epoch{stage="toy"} 3.0' in prom


@pytest.mark.parametrize("n, where", [(6, "in epoch 2 after step 2/4"), (8, "after epoch 2")])
def test_stop_saves_and_the_resumed_run_equals_the_uninterrupted_one(store, reference, n, where):
    stop = StopRequest()
    with pytest.raises(InterruptedRun) as info:
        fit(store, ResumePoint(), stop=stop, loss_fn=stopping_at(stop, n))
    assert (
        info.value.exit_code == EXIT_INTERRUPTED
        and where in str(info.value)
        and "rerun (the Job retries)" in str(info.value)
    )
    saved = load_checkpoint(store, LAST)
    assert saved["step"] == n and saved["epoch"] == n // STEPS
    assert (saved["epoch_progress"] is None) == (n % STEPS == 0)

    counts, model, trainer = fit(store, resume(store))
    assert counts["resumed_from"] == LAST and f"resumed from {LAST}" in " ".join(trainer.ctx.notes)
    ref_store, ref_counts, ref_model = reference
    assert torch.equal(model.weight, ref_model.weight) and torch.equal(model.bias, ref_model.bias)
    assert [r["loss"] for r in rows(store)] == pytest.approx([r["loss"] for r in rows(ref_store)], rel=1e-12)
    assert counts["steps"] == ref_counts["steps"]


def test_stop_before_training_saves_nothing(store):
    stop = StopRequest()
    stop.request()
    with pytest.raises(InterruptedRun, match="before training started"):
        fit(store, ResumePoint(), stop=stop)
    assert list_checkpoints(store, PREFIX) == []


def test_nan_keeps_the_last_good_checkpoint_and_sets_the_loss_gauge_to_nan(store):
    calls = {"n": 0}

    def diverging(model, batch):
        calls["n"] += 1
        return mse(model, batch) * (float("nan") if calls["n"] > STEPS + 1 else 1.0)

    ctx = context(store)
    with pytest.raises(TrainingDiverged, match="in epoch 2"):
        fit(store, ResumePoint(), loss_fn=diverging, ctx=ctx)
    assert load_checkpoint(store, LAST)["epoch"] == 1
    assert [name for name, _ in list_checkpoints(store, PREFIX)] == ["epoch_0001", "last"]
    assert [r["epoch"] for r in rows(store)] == [1]
    assert 'plankton_toy_loss{stage="toy"} NaN' in ctx.metrics.exposition().decode()


def test_resume_choice_auto_never_named_and_corrupt(store, reference):
    fit(store, ResumePoint())
    assert resume(store).label == LAST
    with pytest.raises(BadInputError, match=r"trained with other settings: epochs=3 \(now 5\).*--resume never"):
        resume(store, current={"lr": 0.05, "epochs": 5})
    named = resume(store, "epoch_0002", current={"lr": 0.05, "epochs": 5})
    assert named.label == checkpoint_key("epoch_0002", PREFIX) and not named.exact
    assert "continuing toy/ckpt/epoch_0002.pt with changed settings: epochs=3 (now 5)" in named.notes
    with pytest.raises(BadInputError, match="--resume checkpoint not found"):
        resume(store, "epoch_0099")
    assert find_resume(store, PREFIX, "never").ckpt is None

    store.write_bytes(LAST, b"torn")
    fallback = resume(store)
    assert fallback.label == checkpoint_key("epoch_0003", PREFIX) and fallback.ckpt["epoch"] == 3
    assert any("skipping unreadable checkpoint toy/ckpt/last.pt" in n for n in fallback.notes)

    counts, _, trainer = fit(store, fallback)  # nothing left to train: last.pt is made good again
    assert counts["steps"] == EPOCHS * STEPS and "nothing left to train" in " ".join(trainer.ctx.notes)
    assert load_checkpoint(store, LAST)["epoch"] == EPOCHS


def test_continuing_with_changed_settings_rebuilds_the_schedule_at_the_saved_step(store):
    fit(store, ResumePoint(), epochs=2)
    point = resume(store, "last", current={"lr": 0.05, "epochs": 4})
    counts, _, trainer = fit(store, point, epochs=4)
    assert counts["steps"] == 4 * STEPS and [r["epoch"] for r in rows(store)] == [1, 2, 3, 4]
    # the 4-epoch schedule from step 8 on, not the 2-epoch one the checkpoint was saved with
    t, span = 4 * STEPS - 1 - STEPS, 3 * STEPS  # the last step, into the cosine after one warm-up epoch
    assert rows(store)[-1]["lr"] == pytest.approx(
        0.05 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / span))), rel=1e-9
    )
    assert trainer.scheduler.last_epoch == 4 * STEPS


def test_a_fresh_start_removes_an_earlier_runs_checkpoints(store):
    fit(store, ResumePoint())
    ctx = context(store)
    trainer = Trainer(ctx, toy_run())
    model = torch.nn.Linear(4, 1)
    trainer.restore(
        ResumePoint(),
        {"model": model},
        torch.optim.SGD(model.parameters(), lr=0.1),
        lambda opt, *, start_step: torch.optim.lr_scheduler.ConstantLR(opt, 1.0),
    )
    assert list_checkpoints(store, PREFIX) == []
    assert "removed 4 checkpoint(s) of an earlier run before starting fresh" in ctx.notes
