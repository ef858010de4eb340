"""A toy training task for the shared trainer's tests: a linear model on seeded batches, no stage needed."""

from __future__ import annotations

import logging

import torch
from torch import nn

from plankton_core.metrics import StageMetrics
from plankton_core.stage import StageContext
from plankton_core.training import EpochStats, StopRequest, Trainer, TrainingRun, train_one_epoch, warmup_cosine
from plankton_core.training.checkpoints import ResumePoint

STEPS, BATCH, EPOCHS = 4, 8, 3
PREFIX = "toy/ckpt"
METRICS = "toy/metrics.jsonl"


def batches(epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same batches for an epoch every time (as the stages' loaders), from step `start` on."""
    g = torch.Generator().manual_seed(100 + epoch)
    out = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, 4, generator=g)
        out.append((x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1))
    return out[start:]


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x).squeeze(1) - y) ** 2).mean()


def context(store, name: str = "toy") -> StageContext:
    return StageContext(stage=name, prefix=name, root=store, metrics=StageMetrics(name), log=logging.getLogger("test"))


def toy_run(epochs: int = EPOCHS, save_every: int = 1, lr: float = 0.05) -> TrainingRun:
    return TrainingRun(
        stage="toy",
        ckpt_prefix=PREFIX,
        metrics_key=METRICS,
        epochs=epochs,
        steps_per_epoch=STEPS,
        images_per_step=BATCH,
        save_every=save_every,
        seed=0,
        config={"lr": lr, "epochs": epochs},
    )


def stopping_at(stop: StopRequest, n: int, loss_fn=mse):
    """`loss_fn` that requests a stop while computing the n-th step's loss (as a SIGTERM then would)."""
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] == n:
            stop.request()
        return loss_fn(model, batch)

    return loss


def fit(
    store,
    point: ResumePoint,
    *,
    epochs: int = EPOCHS,
    save_every: int = 1,
    stop: StopRequest | None = None,
    loss_fn=mse,
    ctx: StageContext | None = None,
) -> tuple[dict, nn.Module, Trainer]:
    """Build, restore and fit the toy task the way a stage body does."""
    ctx = ctx or context(store)
    trainer = Trainer(ctx, toy_run(epochs, save_every), stop=stop)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def schedule(opt, *, start_step):
        return warmup_cosine(opt, 0.05, epochs * STEPS, STEPS, 0.01, start_step=start_step)

    scheduler = trainer.restore(point, {"model": model}, optimizer, schedule, extra={"kind": "toy"})

    def run_epoch(epoch: int, start: int) -> EpochStats:
        return train_one_epoch(
            model,
            batches(epoch, start),
            loss_fn,
            optimizer,
            scheduler,
            epoch=epoch,
            steps_per_epoch=STEPS,
            start_step=start,
            stop=trainer.stop,
        )

    counts = trainer.fit(run_epoch)
    return counts, model, trainer
