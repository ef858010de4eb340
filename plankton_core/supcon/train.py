"""The supcon stage: contrastive training of a timm backbone, resumable, observable, one or many GPUs.

`run(cfg, root)` is what `plankton supcon` calls: it joins the torchrun process
group when there is one and runs `main` under the stage contract on rank 0
(other ranks train alongside but write nothing). `main(cfg, ctx)` is the
stage body; `train_one_epoch` is one pass over the cached crops.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..checkpoint import checkpoint_key, load_pretrained_state
from ..config import config_dict
from ..data import ImageCache, load_normalisation, load_splits
from ..errors import BadInputError, InterruptedRun, PlanktonError
from ..losses import supcon_loss
from ..metrics import StageMetrics
from ..models import SupConModel, create_model
from ..progress import progress
from ..stage import RUN_JSON, StageContext, StageResult, run_stage, stage_prefix
from ..tables import read_json
from ..version import package_version
from . import distributed
from .augment import augment_views, two_view_params
from .config import SupConConfig
from .distributed import DistInfo
from .loader import Batch, CachedBatchLoader, EpochPlan
from .signals import StopRequest, stop_on_signals
from .state import (
    CheckpointWriter,
    epoch_name,
    find_resume,
    read_metrics,
    remove_checkpoints,
    rng_state,
    set_rng_state,
    to_cpu,
    trajectory_differences,
    write_metrics,
)

STAGE = "supcon"
log = logging.getLogger("plankton.supcon")

# The loss the loop uses; a module attribute so tests can swap in a diverging one.
contrastive_loss: Callable[..., torch.Tensor] = supcon_loss

# Prometheus gauges set every epoch, exported as plankton_<name>{stage="supcon"}.
GAUGES = {
    "supcon_loss": "Mean contrastive loss of the last finished epoch (NaN when the run diverged).",
    "supcon_epoch": "Epochs finished.",
    "supcon_epochs_total": "Epochs the run is set to train.",
    "supcon_step": "Optimiser steps done.",
    "supcon_learning_rate": "Learning rate at the end of the last epoch.",
    "supcon_images_per_second": "Training throughput of the last epoch (both views counted once per image).",
    "supcon_data_wait_fraction": "Share of the last epoch spent waiting for batches.",
    "supcon_peak_memory_bytes": "Peak GPU memory allocated in the last epoch (GPU only).",
}


class TrainingDiverged(BadInputError):
    """The loss became NaN or infinite: rerunning the same config would diverge again (exit 2)."""


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimiser step `step`: linear warm-up, then cosine down to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress_ = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress_))


@dataclass
class Trainer:
    """Everything one epoch of training needs."""

    cfg: SupConConfig
    net: SupConModel              # the plain module (what checkpoints hold)
    model: Callable               # net, possibly DDP-wrapped and compiled (what the loop calls)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: CachedBatchLoader
    device: torch.device
    size: int
    mean: list[float]
    std: list[float]
    dist: DistInfo
    amp: bool


@dataclass
class EpochResult:
    epoch: int                    # 0-based epoch index
    start_step: int               # first step of this epoch run now (0 unless resumed mid-epoch)
    next_step: int                # the step to run next (== steps per epoch when the epoch is complete)
    loss_sum: float
    steps: int                    # steps run now
    seconds: float
    wait_seconds: float
    lr: float
    interrupted: bool


def train_one_epoch(tr: Trainer, epoch: int, start_step: int = 0, stop: StopRequest | None = None,
                    on_step: Callable[[int, int], None] | None = None) -> EpochResult:
    """One pass (or the rest of one) over the training crops; stops early, after a whole step, when asked.

    Raises TrainingDiverged as soon as a non-finite loss is seen (checked every step on
    CPU, every 25 steps on GPU to avoid a sync per step, and always before returning).
    """
    cfg, dist = tr.cfg, tr.dist
    tr.model.train()
    b = tr.loader.local_batch
    rows = slice(dist.rank * b, (dist.rank + 1) * b)
    check_every = 25 if tr.device.type == "cuda" else 1
    loss_sum = torch.zeros((), dtype=torch.float64, device=tr.device)
    autocast = torch.autocast(tr.device.type, dtype=torch.bfloat16, enabled=tr.amp)
    steps, wait, lr = 0, 0.0, tr.scheduler.get_last_lr()[0]
    next_step, interrupted = start_step, False
    total = len(tr.loader)
    t0 = time.perf_counter()
    batches = iter(progress(tr.loader.epoch(epoch, start_step), total=total - start_step, desc=f"supcon epoch {epoch + 1}/{cfg.epochs}"))
    while True:
        tw = time.perf_counter()
        batch = next(batches, None)
        wait += time.perf_counter() - tw
        if batch is None:
            break
        x = batch.views if batch.views is not None else make_views(tr, batch, epoch)
        with autocast:
            z = tr.model(x)
        z = torch.stack(z.float().split(b), dim=1)  # (b, 2 views, dim)
        z_all = distributed.gather_with_grad(z, dist)
        loss = contrastive_loss(z_all, batch.global_labels.to(tr.device), cfg.temperature, cfg.method, anchor_rows=rows)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = tr.optimizer.param_groups[0]["lr"]
        tr.optimizer.step()
        tr.scheduler.step()
        loss_sum += loss.detach()
        steps += 1
        next_step = batch.step + 1
        if steps % check_every == 0 or next_step == total:
            _check_finite(loss_sum, dist, epoch, next_step)
        if on_step is not None:
            on_step(epoch, next_step)
        if distributed.any_rank(stop is not None and stop.requested, dist) and next_step < total:
            interrupted = True
            break
    _check_finite(loss_sum, dist, epoch, next_step)
    loss_total = float(loss_sum.item())
    return EpochResult(epoch, start_step, next_step, loss_total, steps, time.perf_counter() - t0, wait, lr, interrupted)


def make_views(tr: Trainer, batch: Batch, epoch: int) -> torch.Tensor:
    """Both augmented views of this process's images, on the training device: (2b, 3, S, S)."""
    cfg, b = tr.cfg, tr.loader.local_batch
    rows = slice(tr.dist.rank * b, (tr.dist.rank + 1) * b)
    p0, p1 = two_view_params(cfg.batch_size, cfg.seed, epoch, batch.step, cfg.crop_scale_min, cfg.jitter)
    fmt = torch.channels_last if tr.device.type == "cuda" else torch.contiguous_format
    with torch.no_grad():
        return augment_views(batch.images.to(tr.device, non_blocking=True), [p0.rows(rows), p1.rows(rows)], tr.size, tr.mean, tr.std, fmt)


def augment_on_loader(tr: Trainer) -> Callable[[Batch, int], Batch]:
    """Loader-thread transform for CPU training: the next batches are augmented while this one trains."""

    def transform(batch: Batch, epoch: int) -> Batch:
        batch.views = make_views(tr, batch, epoch)
        return batch

    return transform


def _check_finite(loss_sum: torch.Tensor, dist: DistInfo, epoch: int, step: int) -> None:
    bad = not bool(torch.isfinite(loss_sum).item())
    if distributed.any_rank(bad, dist):
        raise TrainingDiverged(
            f"loss became NaN or infinite in epoch {epoch + 1} (by step {step}); stopped without saving, "
            "the last good checkpoint is kept; lower --base-lr or check the crops"
        )


def resolve_device(requested: str, dist: DistInfo) -> torch.device:
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"--device {requested} asked for, but no CUDA device is available (use --device cpu or auto)")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if dist.enabled:
        return torch.device("cuda", dist.local_rank)
    return torch.device(requested if requested != "auto" else "cuda")


def main(cfg: SupConConfig, ctx: StageContext, *, dist: DistInfo | None = None, stop: StopRequest | None = None,
         on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The stage body: resume or start, train to `cfg.epochs`, checkpoint, report metrics."""
    dist = dist or DistInfo()
    stop = stop or StopRequest()
    with stop_on_signals(stop):
        return _main(cfg, ctx, dist, stop, on_step)


def _main(cfg: SupConConfig, ctx: StageContext, dist: DistInfo, stop: StopRequest, on_step) -> dict[str, Any]:
    root = ctx.root
    device = resolve_device(cfg.device, dist)
    mean, std, stats_size = load_normalisation(root)
    size = cfg.size or stats_size
    train = load_splits(root, "train")
    keys = [str(k) for k in train.column("crop_key").to_pylist()]
    labels = np.asarray(train.column("label").to_pylist(), dtype=np.int64)
    if not keys:
        raise BadInputError(f"no train crops in {root.uri}/stats/splits.parquet; rerun `plankton stats`")
    if len(keys) < cfg.batch_size:
        raise BadInputError(f"--batch-size {cfg.batch_size} is larger than the {len(keys)} train crops; lower it")
    if cfg.batch_size % dist.world:
        raise BadInputError(f"--batch-size {cfg.batch_size} must be divisible by the {dist.world} processes")
    stats_digest = read_json(root, f"{stage_prefix('stats')}/{RUN_JSON}").get("digest", "")
    plan = EpochPlan(len(keys), cfg.batch_size, cfg.seed)
    resolved = config_dict(cfg) | {
        "size": size, "mean": list(mean), "std": list(std), "lr": cfg.lr(), "warmup_epochs_used": cfg.warmup(),
        "stats_digest": stats_digest, "train_images": len(keys), "steps_per_epoch": plan.steps_per_epoch,
        "world_size": dist.world,
    }

    point = find_resume(root, cfg.resume, getattr(root, "endpoint_url", None))
    ctx.notes.extend(point.notes)
    ckpt = point.ckpt
    if ckpt is not None:
        diff = trajectory_differences(ckpt.get("config", {}), resolved)
        if diff and cfg.resume == "auto":
            raise BadInputError(
                f"{point.label} was trained with other settings: {', '.join(diff)}; "
                "rerun with the same options to resume, --resume last to continue it with the new settings, "
                "or --resume never to start over (removes its checkpoints)"
            )
        if diff:
            ctx.notes.append(f"continuing {point.label} with changed settings: {', '.join(diff)}")
    elif dist.is_main:
        removed = remove_checkpoints(root)
        if removed:
            ctx.notes.append(f"removed {removed} checkpoint(s) of an earlier run before starting fresh")
    distributed.barrier(dist)

    if dist.local_rank == 0:
        cache = ImageCache.build(root, keys, size)
    distributed.barrier(dist)
    if dist.local_rank != 0:
        cache = ImageCache.build(root, keys, size)

    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
    try:
        return _train(cfg, ctx, dist, stop, on_step, device, size, mean, std, cache, labels, plan, resolved, point.label, ckpt)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


def _train(cfg, ctx, dist, stop, on_step, device, size, mean, std, cache, labels, plan, resolved, resumed_from, ckpt) -> dict[str, Any]:
    root = ctx.root
    torch.manual_seed(cfg.seed)  # same initial weights on every process and every run
    pretrained = None
    if ckpt is None and cfg.pretrained:
        pretrained = load_pretrained_state(cfg.pretrained, getattr(root, "endpoint_url", None))
    net = create_model(cfg.model, proj_dim=cfg.proj_dim, pretrained_state=pretrained)
    if pretrained is not None:
        ctx.notes.append(f"backbone initialised from {cfg.pretrained}")
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr(), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    spe = plan.steps_per_epoch
    schedule = partial(lr_factor, total_steps=cfg.epochs * spe, warmup_steps=cfg.warmup() * spe, min_ratio=cfg.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling; kept for the checkpoint format

    start_epoch, global_step, carried = 0, 0, {"loss_sum": 0.0, "steps": 0, "seconds": 0.0, "wait_seconds": 0.0}
    if ckpt is not None:
        try:
            net.backbone.load_state_dict(ckpt["model"])
            net.head.load_state_dict(ckpt["head"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise BadInputError(f"cannot resume from {resumed_from}: {str(exc).splitlines()[0]}") from None
        scheduler.base_lrs = [cfg.lr()]
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["step"])
        carried = dict(ckpt.get("epoch_progress") or carried)
        ranks = ckpt.get("rng", {}).get("ranks", [])
        if len(ranks) == dist.world:
            set_rng_state(ranks[dist.rank])
        else:
            torch.manual_seed(cfg.seed + 1000 * dist.rank + global_step)
        ctx.notes.append(f"resumed from {resumed_from} (epoch {start_epoch}, step {global_step})")
        if start_epoch >= cfg.epochs:
            ctx.notes.append(f"nothing left to train: already at epoch {start_epoch}; --resume never retrains from scratch")
        log.info("resuming from %s at epoch %d, step %d", resumed_from, start_epoch, global_step)
    else:
        torch.manual_seed(cfg.seed + 1000 * dist.rank)

    cuda = device.type == "cuda"
    net.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    _optimizer_to(optimizer, device)
    model: Callable = net
    if dist.enabled:
        if cfg.sync_bn and cuda:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        elif not cuda:
            ctx.notes.append("CPU processes keep their own BatchNorm statistics (SyncBatchNorm needs GPUs)")
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    if cfg.compile:
        model = torch.compile(model)

    loader = CachedBatchLoader(cache.array, labels, plan, dist.rank, dist.world, prefetch=cfg.workers, pin_memory=cuda)
    tr = Trainer(cfg, net, model, optimizer, scheduler, loader, device, size, list(mean), list(std), dist, amp=cfg.amp and cuda)
    if not cuda and cfg.workers > 0:
        loader.transform = augment_on_loader(tr)
    writer = CheckpointWriter(root, background=cuda)
    rows = read_metrics(root, start_epoch) if dist.is_main else []
    if dist.is_main:
        log.info("supcon: %s, %d train crops, global batch %d on %d process(es), lr %.4g (base %.4g per 256), %d steps/epoch, device %s",
                 cfg.model, len(labels), cfg.batch_size, dist.world, cfg.lr(), cfg.base_lr, spe, device)

    def snapshot(epoch_done: int, step: int, progress_: dict | None) -> dict[str, Any]:
        rngs = distributed.gather_objects(rng_state(), dist)
        return to_cpu({
            "model": net.backbone.state_dict(), "head": net.head.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch_done, "step": step, "rng": {"ranks": rngs}, "config": resolved,
            "feature_dim": net.feature_dim, "epoch_progress": progress_, "version": package_version(),
        })

    last_key = checkpoint_key("last")
    if distributed.any_rank(stop.requested, dist):
        raise InterruptedRun(f"stopped by {stop.name() or 'request'} before training started; rerun to start")
    try:
        for epoch in range(start_epoch, cfg.epochs):
            first = global_step - epoch * spe if epoch == start_epoch else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            result = train_one_epoch(tr, epoch, first, stop, on_step)
            global_step += result.steps
            sums = {k: carried[k] + v for k, v in (("loss_sum", result.loss_sum), ("steps", result.steps),
                                                   ("seconds", result.seconds), ("wait_seconds", result.wait_seconds))}
            if result.interrupted:
                ckpt_now = snapshot(epoch, global_step, sums)
                if dist.is_main:
                    writer.submit([last_key], ckpt_now)
                    writer.wait()
                distributed.barrier(dist)
                raise InterruptedRun(
                    f"stopped by {stop.name() or 'request'} in epoch {epoch + 1} after step {result.next_step}/{spe}; "
                    f"saved {root.uri}/{last_key}; rerun (the Job retries) to resume"
                )
            carried = {"loss_sum": 0.0, "steps": 0, "seconds": 0.0, "wait_seconds": 0.0}
            loss = distributed.mean_over_ranks(sums["loss_sum"] / max(1, sums["steps"]), dist)
            row = {
                "epoch": epoch + 1, "step": global_step, "loss": loss, "lr": result.lr,
                "images_per_s": sums["steps"] * cfg.batch_size / max(sums["seconds"], 1e-9),
                "data_wait_fraction": sums["wait_seconds"] / max(sums["seconds"], 1e-9),
                "seconds": sums["seconds"],
            }
            if cuda:
                row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
            names = [last_key] + ([checkpoint_key(epoch_name(epoch + 1))] if (epoch + 1) % cfg.save_every == 0 else [])
            ckpt_now = snapshot(epoch + 1, global_step, None)
            if dist.is_main:
                writer.submit(names, ckpt_now)
                rows.append(row)
                write_metrics(root, rows)
                _gauges(ctx, row, cfg)
                log.info("epoch %d/%d: loss %.4f, lr %.4g, %.1f images/s, data wait %.0f%%",
                         epoch + 1, cfg.epochs, loss, result.lr, row["images_per_s"], 100 * row["data_wait_fraction"])
            if distributed.any_rank(stop.requested, dist) and epoch + 1 < cfg.epochs:
                writer.wait()
                distributed.barrier(dist)
                raise InterruptedRun(
                    f"stopped by {stop.name() or 'request'} after epoch {epoch + 1}; saved {root.uri}/{last_key}; "
                    "rerun (the Job retries) to resume"
                )
        if start_epoch >= cfg.epochs and resumed_from != last_key:
            # nothing left to train, but last.pt was unreadable or older: make it the finished state again
            ckpt_now = snapshot(start_epoch, global_step, None)
            if dist.is_main:
                writer.submit([last_key], ckpt_now)
        writer.wait()
    except TrainingDiverged:
        if dist.is_main:
            ctx.metrics.gauge("supcon_loss", float("nan"), GAUGES["supcon_loss"])
            ctx.metrics.push()
        _wait_quietly(writer)
        raise
    except BaseException:
        _wait_quietly(writer)  # let a pending good checkpoint finish; the original error wins
        raise
    distributed.barrier(dist)
    final = rows[-1] if rows else {}
    ctx.metrics.count("epochs", cfg.epochs - start_epoch)
    return {
        "epochs": cfg.epochs, "steps": global_step, "train_images": len(labels),
        "final_loss": round(float(final.get("loss", float("nan"))), 6) if final else None,
        "images_per_s": round(float(final.get("images_per_s", 0.0)), 1) if final else None,
        "resumed_from": resumed_from or None,
    }


def _wait_quietly(writer: CheckpointWriter) -> None:
    try:
        writer.wait()
    except Exception as exc:  # reported, but the error already being raised is the one that matters
        log.error("checkpoint write failed: %s", exc)


def _gauges(ctx: StageContext, row: dict[str, Any], cfg: SupConConfig) -> None:
    m = ctx.metrics
    m.gauge("supcon_loss", row["loss"], GAUGES["supcon_loss"])
    m.gauge("supcon_epoch", row["epoch"], GAUGES["supcon_epoch"])
    m.gauge("supcon_epochs_total", cfg.epochs, GAUGES["supcon_epochs_total"])
    m.gauge("supcon_step", row["step"], GAUGES["supcon_step"])
    m.gauge("supcon_learning_rate", row["lr"], GAUGES["supcon_learning_rate"])
    m.gauge("supcon_images_per_second", row["images_per_s"], GAUGES["supcon_images_per_second"])
    m.gauge("supcon_data_wait_fraction", row["data_wait_fraction"], GAUGES["supcon_data_wait_fraction"])
    if "peak_mem_bytes" in row:
        m.gauge("supcon_peak_memory_bytes", row["peak_mem_bytes"], GAUGES["supcon_peak_memory_bytes"])
    m.push()


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)


GO, SKIP, FAILED = 1, 0, 2


def run(cfg: SupConConfig, root, force: bool = False, *, stop: StopRequest | None = None,
        on_step: Callable[[int, int], None] | None = None) -> StageResult:
    """Run the stage: alone, or as one process of `torchrun` (rank 0 owns the stage contract and all writes)."""
    info = distributed.setup(use_cuda=cfg.device != "cpu" and torch.cuda.is_available())
    try:
        if info.is_main:
            told = {"done": False}

            def tell(decision: int) -> None:
                if not told["done"]:
                    told["done"] = True
                    distributed.broadcast_int(decision, info)

            def body(c: SupConConfig, ctx: StageContext) -> dict[str, Any]:
                tell(GO)
                return main(c, ctx, dist=info, stop=stop, on_step=on_step)

            try:
                result = run_stage(STAGE, cfg, root, body, upstream=["stats"], force=force)
            except BaseException:
                tell(FAILED)
                raise
            tell(SKIP)
            return result
        decision = distributed.broadcast_int(-1, info)
        uri = f"{root.uri}/{stage_prefix(STAGE)}"
        if decision == SKIP:
            return StageResult(STAGE, uri, up_to_date=True)
        if decision != GO:
            raise PlanktonError(f"rank 0 failed before training (rank {info.rank} stops); see its log")
        ctx = StageContext(stage=STAGE, prefix=stage_prefix(STAGE), root=root, metrics=StageMetrics(STAGE), log=log)
        counts = main(cfg, ctx, dist=info, stop=stop, on_step=on_step)
        return StageResult(STAGE, uri, up_to_date=False, counts=counts)
    finally:
        distributed.teardown(info)


__all__ = ["GAUGES", "SupConConfig", "TrainingDiverged", "lr_factor", "main", "run", "train_one_epoch"]
