"""train_one_epoch on a toy task: steps and schedule, mid-epoch starts, stop requests, the NaN stop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from training_toy import STEPS, batches, mse

from plankton_core.errors import EXIT_BAD_INPUT
from plankton_core.training import EpochStats, StopRequest, TrainingDiverged, train_one_epoch, warmup_cosine


def setup(lr: float = 0.05):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return model, optimizer, warmup_cosine(optimizer, lr, 3 * STEPS, 2, 0.0)


def plain_loop(model, optimizer, scheduler, epoch: int) -> list[float]:
    """The textbook loop train_one_epoch must equal."""
    losses = []
    for batch in batches(epoch):
        loss = mse(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def test_one_epoch_equals_the_plain_loop_and_steps_the_schedule_per_step():
    model, optimizer, scheduler = setup()
    stats = train_one_epoch(model, batches(0), mse, optimizer, scheduler, epoch=0, steps_per_epoch=STEPS)
    ref_model, ref_opt, ref_sched = setup()
    ref_losses = plain_loop(ref_model, ref_opt, ref_sched, 0)
    assert torch.equal(model.weight, ref_model.weight) and torch.equal(model.bias, ref_model.bias)
    assert stats.loss_sum == pytest.approx(sum(ref_losses), rel=1e-6)
    assert (stats.epoch, stats.steps, stats.next_step, stats.interrupted) == (0, STEPS, STEPS, False)
    assert scheduler.last_epoch == STEPS
    assert stats.lr == pytest.approx(
        0.05 * (1 + torch.cos(torch.tensor(torch.pi * 1 / 10)).item()) / 2
    )  # the 4th step's lr
    assert 0 <= stats.wait_seconds <= stats.seconds
    assert model.training


def test_start_mid_epoch_counts_from_there():
    model, optimizer, scheduler = setup()
    stats = train_one_epoch(
        model, batches(1, 3), mse, optimizer, scheduler, epoch=1, steps_per_epoch=STEPS, start_step=3
    )
    assert (stats.steps, stats.next_step) == (1, STEPS)


def test_a_stop_request_ends_the_epoch_after_the_current_step_but_not_on_the_last():
    model, optimizer, scheduler = setup()
    stop = StopRequest()
    stop.request()
    stats = train_one_epoch(model, batches(0), mse, optimizer, scheduler, epoch=0, steps_per_epoch=STEPS, stop=stop)
    assert (stats.steps, stats.next_step, stats.interrupted) == (1, 1, True)
    last = train_one_epoch(
        model,
        batches(0, STEPS - 1),
        mse,
        optimizer,
        scheduler,
        epoch=0,
        steps_per_epoch=STEPS,
        start_step=STEPS - 1,
        stop=stop,
    )
    assert (last.next_step, last.interrupted) == (STEPS, False)  # the epoch is complete: nothing to interrupt
    assert stop.name() == "SIGTERM"


@pytest.mark.parametrize("check_every", [1, 100])
def test_nan_loss_raises_training_diverged(check_every):
    model, optimizer, scheduler = setup()
    calls = {"n": 0}

    def diverging(m, batch):
        calls["n"] += 1
        loss = mse(m, batch)
        return loss * float("nan") if calls["n"] == 2 else loss

    with pytest.raises(TrainingDiverged) as info:
        train_one_epoch(
            model, batches(0), diverging, optimizer, scheduler, epoch=4, steps_per_epoch=STEPS, check_every=check_every
        )
    assert info.value.exit_code == EXIT_BAD_INPUT
    step = 2 if check_every == 1 else STEPS  # checked every step, or at the latest at the end of the epoch
    assert f"loss became NaN or infinite in epoch 5 (by step {step})" in str(info.value)
    assert "last good checkpoint is kept" in str(info.value)
    assert "lower the learning rate or check the inputs" in str(info.value)  # no stage's flag unless the stage names it


def test_nan_message_names_the_stages_learning_rate_flag():
    model, optimizer, scheduler = setup()
    with pytest.raises(TrainingDiverged, match=r"lower the learning rate \(--schedule\) or check the inputs"):
        train_one_epoch(
            model,
            batches(0),
            lambda m, b: mse(m, b) * float("nan"),
            optimizer,
            scheduler,
            epoch=0,
            steps_per_epoch=STEPS,
            lr_option="--schedule",
        )


def test_epoch_stats_continue_an_interrupted_part():
    first = EpochStats(2, 3, loss_sum=1.5, steps=3, seconds=2.0, wait_seconds=0.5, lr=0.1, interrupted=True)
    rest = EpochStats(2, 5, loss_sum=1.0, steps=2, seconds=1.0, wait_seconds=0.25, lr=0.05)
    both = rest.after(first)
    assert (both.loss_sum, both.steps, both.seconds, both.wait_seconds) == (2.5, 5, 3.0, 0.75)
    assert (both.next_step, both.lr, both.interrupted) == (5, 0.05, False)
    assert rest.after(None) is rest
