"""The part of training every training stage shares: checkpoints, resume, SIGTERM, NaN stop, metrics.

A stage body reads like a torchvision reference script:

    point = choose_resume(...)                      # in the stage's check: before any output is touched
    trainer = Trainer(ctx, run, dist=dist, stop=stop, device=device)
    net = build the model (pretrained weights only when point.ckpt is None)
    optimizer = ...
    scheduler = trainer.restore(point, {"model": net}, optimizer, schedule)
    counts = trainer.fit(lambda epoch, start: train_one_epoch(model, batches(epoch, start), loss_fn,
                                                              optimizer, scheduler, epoch=epoch, ...))

`fit` runs the epochs. After each it saves `last.pt` (and `epoch_NNNN.pt`
every `save_every` epochs), appends to `metrics.jsonl` and sets the
`<stage>_*` gauges. A stop request (SIGTERM, Ctrl-C) saves the exact step
and raises InterruptedRun (exit 75); a NaN loss raises TrainingDiverged
(exit 2) without saving, so the last good checkpoint stays. Under DDP every
rank calls every method (they gather RNG states and agree on stops); only
the primary process writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..checkpoint import checkpoint_key, epoch_name
from ..errors import BadInputError, InterruptedRun
from ..stage import StageContext
from ..store import Store
from ..version import package_version
from .checkpoints import CheckpointWriter, ResumePoint, remove_checkpoints, rng_state, set_rng_state, to_cpu
from .distributed import DistInfo, any_rank, barrier, gather_objects, mean_over_ranks
from .loop import EpochStats, TrainingDiverged
from .signals import StopRequest

log = logging.getLogger("plankton.training")

_GAUGES = {
    "loss": "Mean training loss of the last finished epoch (NaN when the run diverged).",
    "epoch": "Epochs finished.",
    "epochs_total": "Epochs the run is set to train.",
    "step": "Optimiser steps done.",
    "learning_rate": "Learning rate at the end of the last epoch.",
    "images_per_second": "Training throughput of the last epoch (images per second).",
    "data_wait_fraction": "Share of the last epoch spent waiting for batches.",
    "peak_memory_bytes": "Peak GPU memory allocated in the last epoch (GPU only).",
}
_ROW_OF_GAUGE = {
    "loss": "loss",
    "epoch": "epoch",
    "step": "step",
    "learning_rate": "lr",
    "images_per_second": "images_per_s",
    "data_wait_fraction": "data_wait_fraction",
    "peak_memory_bytes": "peak_mem_bytes",
}


def epoch_gauges(stage: str) -> dict[str, str]:
    """The gauges a training stage sets every epoch, exported as plankton_<stage>_<name>{stage=…}: name → help."""
    return {f"{stage}_{name}": doc for name, doc in _GAUGES.items()}


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class TrainingRun:
    """What the trainer needs to know of a stage's run."""

    stage: str  # gauges are `<stage>_loss`…, messages name it
    ckpt_prefix: str  # e.g. artifacts.SUPCON_CKPT: last.pt and epoch_NNNN.pt go here
    metrics_key: str  # e.g. artifacts.SUPCON_METRICS: one JSON line per finished epoch
    epochs: int
    steps_per_epoch: int
    images_per_step: int  # the global batch, for images/s
    save_every: int  # epoch_NNNN.pt every K epochs (last.pt every epoch)
    seed: int
    config: dict[str, Any]  # the resolved config every checkpoint records


class Trainer:
    """Checkpointing, resume, stop requests, NaN stop and metrics around a stage's epochs."""

    def __init__(
        self,
        ctx: StageContext,
        run: TrainingRun,
        *,
        dist: DistInfo | None = None,
        stop: StopRequest | None = None,
        device: torch.device | None = None,
    ):
        self.ctx, self.run = ctx, run
        self.dist = dist or DistInfo()
        self.stop = stop or StopRequest()
        self.device = device or torch.device("cpu")
        self.writer = CheckpointWriter(ctx.root, background=self.device.type == "cuda")
        self.gauges = epoch_gauges(run.stage)
        self.state: Mapping[str, Stateful] = {}
        self.extra: dict[str, Any] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.start_epoch = self.step = 0
        self.resumed_from = ""
        self.carried: EpochStats | None = None  # the part of an epoch run before an interruption
        self.rows: list[dict[str, Any]] = []

    @property
    def last_key(self) -> str:
        return checkpoint_key("last", self.run.ckpt_prefix)

    def restore(
        self,
        point: ResumePoint,
        state: Mapping[str, Stateful],
        optimizer: torch.optim.Optimizer,
        schedule: Callable[..., torch.optim.lr_scheduler.LRScheduler],
        extra: Mapping[str, Any] | None = None,
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """Continue from `point` (or start fresh, removing an earlier run's checkpoints); returns the scheduler.

        `state` names what the checkpoint holds besides the trainer's own entries
        (weights, a queue…: anything with state_dict/load_state_dict), `extra` plain
        values to record. `schedule(optimizer, start_step=N)` builds the lr schedule at step N;
        an exact resume then loads its saved state, a resume with changed settings
        rebuilds it at the saved step.
        """
        self.state, self.optimizer, self.extra = state, optimizer, dict(extra or {})
        ckpt, dist = point.ckpt, self.dist
        self.ctx.notes.extend(point.notes)
        if ckpt is None:
            self.scheduler = schedule(optimizer, start_step=0)
            if dist.is_main:
                removed = remove_checkpoints(self.ctx.root, self.run.ckpt_prefix)
                if removed:
                    self.ctx.notes.append(f"removed {removed} checkpoint(s) of an earlier run before starting fresh")
            torch.manual_seed(self.run.seed + 1000 * dist.rank)
            barrier(dist)
            self.rows = []
            return self.scheduler

        self.scheduler = schedule(optimizer, start_step=0) if point.exact else None
        try:
            for name, obj in state.items():
                obj.load_state_dict(ckpt[name])
            optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise BadInputError(f"cannot resume from {point.label}: {str(exc).splitlines()[0]}") from None
        self.start_epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        if self.scheduler is None:
            self.scheduler = schedule(optimizer, start_step=self.step)
        progress = ckpt.get("epoch_progress")
        self.carried = (
            EpochStats(self.start_epoch, self.step - self.start_epoch * self.run.steps_per_epoch, **progress)
            if progress
            else None
        )
        ranks = ckpt.get("rng", {}).get("ranks", [])
        if len(ranks) == dist.world:
            set_rng_state(ranks[dist.rank])
        else:
            torch.manual_seed(self.run.seed + 1000 * dist.rank + self.step)
        self.resumed_from = point.label
        self.ctx.notes.append(f"resumed from {point.label} (epoch {self.start_epoch}, step {self.step})")
        if self.start_epoch >= self.run.epochs:
            self.ctx.notes.append(
                f"nothing left to train: already at epoch {self.start_epoch}; --resume never retrains from scratch"
            )
        log.info("resuming from %s at epoch %d, step %d", point.label, self.start_epoch, self.step)
        self.rows = read_metrics(self.ctx.root, self.run.metrics_key, self.start_epoch) if dist.is_main else []
        return self.scheduler

    def snapshot(self, epochs_done: int, progress: EpochStats | None = None) -> dict[str, Any]:
        """The checkpoint of this moment (a CPU copy); a collective under DDP (every rank's RNG state).

        Only the primary process, the one that writes it, builds it; the others get an empty dict."""
        assert self.optimizer is not None and self.scheduler is not None, "restore() first"
        rngs = gather_objects(rng_state(), self.dist)
        if not self.dist.is_main:  # _save writes nothing here: no CPU copy of the whole state to throw away
            return {}
        sums = (
            None
            if progress is None
            else {k: getattr(progress, k) for k in ("loss_sum", "steps", "seconds", "wait_seconds")}
        )
        return to_cpu(
            {
                **{name: obj.state_dict() for name, obj in self.state.items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": epochs_done,
                "step": self.step,
                "rng": {"ranks": rngs},
                "config": self.run.config,
                "epoch_progress": sums,
                "version": package_version(),
                **self.extra,
            }
        )

    def fit(self, run_epoch: Callable[[int, int], EpochStats]) -> dict[str, Any]:
        """Train epochs `start_epoch`… with `run_epoch(epoch, start_step)`; returns the stage's counts."""
        run, dist = self.run, self.dist
        if any_rank(self.stop.requested, dist):
            raise InterruptedRun(f"stopped by {self.stop.name() or 'request'} before training started; rerun to start")
        try:
            for epoch in range(self.start_epoch, run.epochs):
                first = self.step - epoch * run.steps_per_epoch if epoch == self.start_epoch else 0
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                stats = run_epoch(epoch, first)
                self.step += stats.steps
                stats, self.carried = stats.after(self.carried), None
                if stats.interrupted:
                    self._save([self.last_key], self.snapshot(epoch, stats))
                    self._line_up()
                    raise InterruptedRun(
                        f"stopped by {self.stop.name() or 'request'} in epoch {epoch + 1} after step "
                        f"{stats.next_step}/{run.steps_per_epoch}; saved {self.ctx.root.uri}/{self.last_key}; "
                        "rerun (the Job retries) to resume"
                    )
                self._end_epoch(epoch, stats)
                if any_rank(self.stop.requested, dist) and epoch + 1 < run.epochs:
                    self._line_up()
                    raise InterruptedRun(
                        f"stopped by {self.stop.name() or 'request'} after epoch {epoch + 1}; saved "
                        f"{self.ctx.root.uri}/{self.last_key}; rerun (the Job retries) to resume"
                    )
            if self.start_epoch >= run.epochs and self.resumed_from != self.last_key:
                # nothing left to train, but last.pt was unreadable or older: make it the finished state again
                self._save([self.last_key], self.snapshot(self.start_epoch))
            self.writer.wait()
        except TrainingDiverged:
            if dist.is_main:
                self.ctx.metrics.gauge(f"{run.stage}_loss", float("nan"), self.gauges[f"{run.stage}_loss"])
                self.ctx.metrics.push()
            self.writer.wait_quietly()
            raise
        except BaseException:
            self.writer.wait_quietly()
            raise
        barrier(dist)
        self.ctx.metrics.count("epochs", run.epochs - self.start_epoch)
        final = self.rows[-1] if self.rows else {}
        return {
            "epochs": run.epochs,
            "steps": self.step,
            "final_loss": round(float(final["loss"]), 6) if final else None,
            "images_per_s": round(float(final["images_per_s"]), 1) if final else None,
            "resumed_from": self.resumed_from or None,
        }

    def _end_epoch(self, epoch: int, stats: EpochStats) -> None:
        """Checkpoint, metrics line and gauges of a finished epoch."""
        run = self.run
        loss = mean_over_ranks(stats.loss_sum / max(1, stats.steps), self.dist)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "loss": loss,
            "lr": stats.lr,
            "images_per_s": stats.steps * run.images_per_step / max(stats.seconds, 1e-9),
            "data_wait_fraction": stats.wait_seconds / max(stats.seconds, 1e-9),
            "seconds": stats.seconds,
        }
        if self.device.type == "cuda":
            row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        # the metrics row, then epoch_NNNN.pt, then last.pt: whatever write fails (a full disk), a resume
        # continues from a checkpoint whose epoch has its row and its numbered checkpoint, or redoes the epoch
        names = [checkpoint_key(epoch_name(epoch + 1), run.ckpt_prefix)] if (epoch + 1) % run.save_every == 0 else []
        names.append(self.last_key)
        if self.dist.is_main:
            self.rows.append(row)
            write_metrics(self.ctx.root, run.metrics_key, self.rows)
        self._save(names, self.snapshot(epoch + 1))
        if not self.dist.is_main:
            return
        values = {**row, "epochs_total": run.epochs}
        for name, key in {**_ROW_OF_GAUGE, "epochs_total": "epochs_total"}.items():
            if key in values:
                self.ctx.metrics.gauge(f"{run.stage}_{name}", values[key], self.gauges[f"{run.stage}_{name}"])
        self.ctx.metrics.push()
        log.info(
            "epoch %d/%d: loss %.4f, lr %.4g, %.1f images/s, data wait %.0f%%",
            epoch + 1,
            run.epochs,
            loss,
            stats.lr,
            row["images_per_s"],
            100 * row["data_wait_fraction"],
        )

    def _save(self, keys: list[str], ckpt: dict[str, Any]) -> None:
        """The primary process writes `ckpt` under `keys` (in the background on GPU)."""
        if self.dist.is_main:
            self.writer.submit(keys, ckpt)

    def _line_up(self) -> None:
        """Before stopping: every checkpoint written, every rank here."""
        self.writer.wait()
        barrier(self.dist)


def read_metrics(store: Store, key: str, upto_epoch: int) -> list[dict[str, Any]]:
    """metrics.jsonl lines of epochs <= upto_epoch (a resumed run rewrites the rest)."""
    if not store.exists(key):
        return []
    lines = []
    for raw in store.read_bytes(key).decode().splitlines():
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= upto_epoch:
            lines.append(row)
    return lines


def write_metrics(store: Store, key: str, rows: list[dict[str, Any]]) -> None:
    store.write_bytes(key, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


__all__ = ["Trainer", "TrainingRun", "epoch_gauges", "read_metrics", "write_metrics"]
