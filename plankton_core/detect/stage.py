"""The detect stage body: Faster R-CNN + FPN on a timm backbone, trained on whole frames, scored with COCOeval.

`check` reads the annotations, splits the frames (stats' grouped rule, or the split stats gave
their crops), resolves the backbone's initial weights and the resume point, before any output
is touched. `body` trains the rounds of `--schedule` along one checkpoint chain with the shared
trainer (`plankton_core.training`: checkpoints, exact resume, SIGTERM → exit 75, NaN stop,
metrics), evaluates on val after every epoch (COCO AP; the best epoch is kept as
detect/ckpt/best.pt, so test never chooses), and at the end evaluates best.pt on test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifacts import (
    CROP_RUN,
    DETECT_BEST,
    DETECT_CKPT,
    DETECT_TRAIN_METRICS,
    DETECT_VAL,
    PRETRAIN_CKPT,
)
from ..checkpoint import checkpoint_key, epoch_name, load_checkpoint, read_uri, save_checkpoint, state_dict_from_file
from ..config import config_dict
from ..detection import IMAGENET_MEAN, IMAGENET_STD, Detections, build_detector, detect, detector_spec
from ..errors import BadInputError, UpstreamNotReadyError
from ..progress import progress
from ..stage import SUCCESS, StageContext, recorded_run
from ..store import Store, join, open_store
from ..tables import read_json
from ..training import (
    EpochStats,
    ResumePoint,
    StopRequest,
    Trainer,
    TrainingRun,
    choose_resume,
    epoch_gauges,
    stop_on_signals,
    train_one_epoch,
)
from ..training.checkpoints import to_cpu
from ..training.distributed import DistInfo, barrier, gather_objects, process_group
from ..training.runtime import deterministic_kernels, training_device
from .annotations import Annotations, Frame, assign_frame_splits, load_coco, load_manifest, load_synth
from .coco import CocoResult, evaluate
from .config import TRAJECTORY_FIELDS, DetectConfig
from .data import Batch, TrainBatches, decoded
from .schedule import lr_at, round_schedule

log = logging.getLogger("plankton.detect")
GAUGES = epoch_gauges("detect")


@dataclass
class DetectPlan:
    device: torch.device
    images_uri: str
    ann: Annotations
    init: str  # what the backbone starts from (a label for messages)
    init_uri: str | None  # where its weights are (None: random)
    resolved: dict[str, Any]
    resume: ResumePoint
    fingerprint: dict[str, Any]


def images_store(cfg: DetectConfig, ctx: StageContext) -> Store:
    """Where the frames are: --input, or (manifest) the crop stage's recorded --input."""
    uri = cfg.input
    if not uri and cfg.annotations == "manifest":
        uri = str(read_json(ctx.root, CROP_RUN).get("config", {}).get("input") or "")
    if not uri:
        raise BadInputError("--input URI (the frames) is needed: the crop stage records none")
    return open_store(uri, ctx.s3_endpoint)


def load_annotations(cfg: DetectConfig, ctx: StageContext, images: Store) -> Annotations:
    if cfg.annotations == "manifest":
        if not ctx.root.exists(join("crop", SUCCESS)):
            raise UpstreamNotReadyError(
                f"--annotations manifest needs a finished crop stage: no {ctx.root.uri}/crop/{SUCCESS}; "
                "run `plankton crop` first"
            )
        return load_manifest(ctx.root)
    if cfg.annotations == "coco":
        data = read_uri(cfg.coco, ctx.s3_endpoint, "COCO file")
        return load_coco(data, cfg.coco, set(images.list()))
    return load_synth(images)


def resolve_init(cfg: DetectConfig, ctx: StageContext) -> tuple[str, str | None, str]:
    """(label, weights URI or None, identity for the digest) of `--init`."""
    root = ctx.root
    if cfg.init == "none":
        return "random", None, "none"
    if cfg.init == "pretrain":
        key = checkpoint_key("last", PRETRAIN_CKPT)
        if not root.exists(join("pretrain", SUCCESS)) or not root.exists(key):
            raise UpstreamNotReadyError(
                f"--init pretrain needs a finished pretrain stage ({root.uri}/{key}); "
                "run `plankton pretrain`, or use --init supcon|none|URI"
            )
        return f"pretrain {key}", f"{root.uri}/{key}", str(recorded_run(root, "pretrain").get("digest", ""))
    if cfg.init == "supcon":
        from ..embedding import selected_checkpoint

        key = selected_checkpoint(root)
        return f"supcon {key}", f"{root.uri}/{key}", f"{key}:{recorded_run(root, 'linear-sweep').get('digest', '')}"
    return cfg.init, cfg.init, cfg.init


def check(cfg: DetectConfig, ctx: StageContext) -> DetectPlan:
    """Annotations, split, init weights and resume point; touches no output."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = training_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")), distributed=world > 1)
    images = images_store(cfg, ctx)
    ann = load_annotations(cfg, ctx, images)
    if not ann.classes:
        raise BadInputError("the annotations name no object class")
    assign_frame_splits(ann, cfg.split, cfg.seed, ctx.root)
    train = ann.split("train")
    global_batch = cfg.batch_size * world
    if len(train) < global_batch:
        raise BadInputError(
            f"{len(train)} train frames are fewer than the global batch {global_batch} "
            f"(--batch-size {cfg.batch_size} × {world}); lower it"
        )
    init, init_uri, init_id = resolve_init(cfg, ctx)
    rounds = cfg.rounds()
    scale = global_batch / cfg.lr_batch
    resolved = config_dict(cfg) | {
        "input": images.uri,
        "classes": ann.classes,
        "world_size": world,
        "global_batch": global_batch,
        "rounds": [[e, lr * scale] for e, lr in rounds],
        "lr_scale": scale,
        "train_frames": len(train),
        "steps_per_epoch": len(train) // global_batch,
        "init_weights": init,
        "trainable_layers": 5 if cfg.init == "none" else cfg.trainable_layers,
        "frozen_bn": cfg.init != "none",
    }
    resume = choose_resume(
        ctx.root,
        DETECT_CKPT,
        cfg.resume,
        resolved,
        TRAJECTORY_FIELDS + ("classes", "train_frames", "world_size"),
        ctx.s3_endpoint,
    )
    if resume.ckpt is not None:
        check_rounds(resume, resolved, cfg.resume)
    digest = hashlib.sha256()
    for f in ann.frames:
        digest.update(json.dumps([f.key, f.split, f.boxes.round(3).tolist(), f.labels.tolist()]).encode())
    fingerprint = {"annotations": digest.hexdigest(), "frames": len(ann.frames), "init": init_id}
    return DetectPlan(device, images.uri, ann, init, init_uri, resolved, resume, fingerprint)


def check_rounds(point: ResumePoint, resolved: dict[str, Any], resume: str) -> None:
    """A checkpoint continues only along its own rounds: the rounds it has trained must start the new schedule."""
    saved = [tuple(r) for r in point.ckpt.get("config", {}).get("rounds", [])] if point.ckpt else []
    now = [tuple(r) for r in resolved["rounds"]]
    done = int(point.ckpt.get("epoch", 0)) if point.ckpt else 0
    ends, total = [], 0
    for e, _ in saved:
        total += e
        ends.append(total)
    trained = [r for r, end in zip(saved, ends) if end - r[0] < done]  # rounds the checkpoint has begun
    if now[: len(trained)] != trained[: len(now)] and resume == "auto":
        raise BadInputError(
            f"{point.label} was trained with rounds {saved}, which the new --schedule does not continue ({now}); "
            "keep the earlier rounds and add new ones to resume, --resume last to continue anyway, "
            "or --resume never to start over"
        )


def fingerprint(cfg: DetectConfig, ctx: StageContext) -> dict[str, Any]:
    return ctx.plan.fingerprint


def backbone_state(
    plan: DetectPlan, ctx: StageContext
) -> tuple[dict[str, torch.Tensor] | None, list[float], list[float]]:
    """The initial backbone weights and the normalisation they were trained with (ImageNet's when unknown)."""
    if plan.init_uri is None:
        return None, list(IMAGENET_MEAN), list(IMAGENET_STD)
    data = read_uri(plan.init_uri, ctx.s3_endpoint, "--init weights file")
    state = state_dict_from_file(data, f"--init weights {plan.init_uri}")
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    try:
        from ..checkpoint import safe_torch_load

        obj = safe_torch_load(data, plan.init_uri) if data[8:9] != b"{" else None
        ccfg = obj.get("config", {}) if isinstance(obj, dict) else {}
        if isinstance(ccfg, dict) and ccfg.get("mean") and ccfg.get("std"):
            mean, std = [float(x) for x in ccfg["mean"]], [float(x) for x in ccfg["std"]]
            if len(mean) == 1:
                mean, std = mean * 3, std * 3
    except BadInputError:
        pass
    return state, mean, std


def body(cfg: DetectConfig, ctx: StageContext) -> dict[str, Any]:
    """Train the rounds of `--schedule` with val after every epoch, then evaluate best.pt on test and write the
    outputs; returns the counts run.json records."""
    plan: DetectPlan = ctx.plan
    device, cuda = plan.device, plan.device.type == "cuda"
    images = open_store(plan.images_uri, ctx.s3_endpoint)
    ann = plan.ann
    ctx.notes.extend(ann.notes)
    with (
        process_group(use_cuda=cuda) as dist,
        stop_on_signals(StopRequest()) as stop,
        deterministic_kernels(cfg.deterministic, device),
    ):
        resolved, net = build_network(cfg, ctx, plan)
        batches = TrainBatches(
            images, ann.split("train"), cfg.batch_size, dist.rank, dist.world, cfg.seed, cfg.flip, cfg.workers
        )
        rounds = [(int(e), float(lr)) for e, lr in resolved["rounds"]]
        run = training_run(cfg, resolved, sum(e for e, _ in rounds), batches)
        trainer = Trainer(ctx, run, dist=dist, stop=stop, device=device)
        optimizer, scheduler = restore_training(cfg, ctx, trainer, net, rounds, len(batches))
        model = to_device(net, optimizer, dist, device)
        training = DetectTraining(
            cfg,
            ctx,
            trainer,
            net,
            model,
            optimizer,
            scheduler,
            batches,
            images,
            ann,
            dist,
            stop,
            device,
            resolved,
            rounds,
        )
        if dist.is_main:
            training.history = read_val(ctx.root, trainer.start_epoch)
            log_start(cfg, ann, batches, dist, rounds, device)
        counts = trainer.fit(training.run_epoch)
        best, test = training.test_best()
    out = counts | {
        "frames": len(ann.frames),
        "train_frames": len(ann.split("train")),
        "classes": len(ann.classes),
        "best_epoch": best.get("epoch") if best else None,
    }
    if test is not None:
        out |= {"test_AP": round_or_none(test[0].stats["AP"]), "test_AP50": round_or_none(test[0].stats["AP50"])}
    return out


def build_network(cfg: DetectConfig, ctx: StageContext, plan: DetectPlan) -> tuple[dict[str, Any], nn.Module]:
    """The resolved config with the input normalisation, and the detector: its backbone from `--init` when starting
    fresh (a resumed run restores every weight from the checkpoint)."""
    resolved = dict(plan.resolved)
    if plan.resume.ckpt is None:
        state, mean, std = backbone_state(plan, ctx)
        resolved |= {"mean": mean, "std": std}
    else:
        saved = plan.resume.ckpt["config"]
        resolved |= {"mean": saved.get("mean", list(IMAGENET_MEAN)), "std": saved.get("std", list(IMAGENET_STD))}
        state = None
    torch.manual_seed(cfg.seed)
    net = build_detector(detector_spec(resolved), state)
    net.roi_heads.score_thresh = cfg.eval_score  # type: ignore[union-attr]
    if state is not None:
        ctx.notes.append(f"backbone initialised from {plan.init}")
    return resolved, net


def training_run(cfg: DetectConfig, resolved: dict[str, Any], epochs: int, batches: TrainBatches) -> TrainingRun:
    return TrainingRun(
        stage="detect",
        ckpt_prefix=DETECT_CKPT,
        metrics_key=DETECT_TRAIN_METRICS,
        epochs=epochs,
        steps_per_epoch=len(batches),
        images_per_step=batches.global_batch,
        save_every=cfg.save_every,
        seed=cfg.seed,
        config=resolved,
    )


def restore_training(
    cfg: DetectConfig,
    ctx: StageContext,
    trainer: Trainer,
    net: nn.Module,
    rounds: list[tuple[int, float]],
    steps_per_epoch: int,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and the round schedule, restored from the resume point; a fresh start clears best.pt and
    val.jsonl."""
    plan: DetectPlan = ctx.plan
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=rounds[0][1], momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    warmup = min(cfg.warmup_iters, steps_per_epoch)
    schedule = partial(
        round_schedule, rounds=rounds, steps_per_epoch=steps_per_epoch, warmup_steps=warmup, decay=cfg.decay
    )
    fresh = plan.resume.ckpt is None
    scheduler = trainer.restore(plan.resume, {"model": net}, optimizer, schedule)
    # a chain continued with added rounds: the restored optimiser holds the next lr of the schedule it was saved with
    current = lr_at(scheduler.last_epoch, rounds, steps_per_epoch, warmup, cfg.decay)
    for group in optimizer.param_groups:
        group["lr"] = current
    scheduler._last_lr = [current] * len(optimizer.param_groups)  # what get_last_lr() reports
    plan.resume.ckpt = None
    if fresh and trainer.dist.is_main:
        for key in (DETECT_BEST, DETECT_VAL):
            ctx.root.delete(key)
    return optimizer, scheduler


def to_device(net: nn.Module, optimizer: torch.optim.Optimizer, dist: DistInfo, device: torch.device) -> nn.Module:
    """Move the detector and the optimiser's state to `device`; the model that trains (DDP around `net` when
    distributed)."""
    net.to(device)
    for st in optimizer.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                st[k] = v.to(device)
    if not dist.enabled:
        return net
    return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def log_start(
    cfg: DetectConfig,
    ann: Annotations,
    batches: TrainBatches,
    dist: DistInfo,
    rounds: list[tuple[int, float]],
    device: torch.device,
) -> None:
    log.info(
        "detect: %s FPN, %d classes, %d/%d/%d train/val/test frames, "
        "global batch %d on %d process(es), rounds %s, device %s",
        cfg.model,
        len(ann.classes),
        len(batches.frames),
        len(ann.split("val")),
        len(ann.split("test")),
        batches.global_batch,
        dist.world,
        ", ".join(f"{e}@{lr:.4g}" for e, lr in rounds),
        device,
    )


@dataclass
class DetectTraining:
    """What detect's epochs share: `run_epoch` for `Trainer.fit`, then `test_best` on the chosen weights."""

    cfg: DetectConfig
    ctx: StageContext
    trainer: Trainer
    net: nn.Module  # the detector (val, best.pt)
    model: nn.Module  # what trains: `net`, or DDP around it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: TrainBatches
    images: Store
    ann: Annotations
    dist: DistInfo
    stop: StopRequest
    device: torch.device
    resolved: dict[str, Any]
    rounds: list[tuple[int, float]]
    history: list[dict[str, Any]] = field(default_factory=list)  # val rows so far (rank 0)

    def __post_init__(self) -> None:
        self.epochs = sum(e for e, _ in self.rounds)
        self.round_ends = set(np.cumsum([e for e, _ in self.rounds]).tolist())
        self.val_frames = self.ann.split("val")
        self.amp = self.cfg.amp and self.device.type == "cuda"

    def loss_fn(self, m: nn.Module, batch: Batch) -> torch.Tensor:
        imgs = [x.to(self.device, non_blocking=True) for x in batch.images]
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in batch.targets]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            losses = m(imgs, targets)
        return torch.stack([v.float() for v in losses.values()]).sum()

    def run_epoch(self, epoch: int, start_step: int) -> EpochStats:
        """Train one epoch from `start_step`; a finished epoch is scored on val (rank 0 records it)."""
        dist, batches = self.dist, self.batches
        if epoch in self.round_ends and dist.is_main:  # the chain keeps every round's last epoch
            keep_numbered(self.ctx.root, self.trainer, epoch)
        it = progress(
            batches.epoch(epoch, start_step),
            total=len(batches) - start_step,
            desc=f"detect epoch {epoch + 1}/{self.epochs}",
        )
        stats = train_one_epoch(
            self.model,
            it,
            self.loss_fn,
            self.optimizer,
            self.scheduler,
            epoch=epoch,
            steps_per_epoch=len(batches),
            start_step=start_step,
            dist=dist,
            stop=self.stop,
            lr_option="--schedule",
        )
        if not stats.interrupted:
            result = self.evaluate(self.val_frames) if self.val_frames else None
            if dist.is_main:
                record_val(self.ctx.root, self.history, epoch + 1, result, self.net, self.resolved)
        return stats

    def evaluate(self, frames: Sequence[Frame], keep: bool = False) -> tuple[CocoResult, list[Detections]] | None:
        return evaluate_frames(
            self.net, self.images, frames, self.ann.classes, self.device, self.dist, self.cfg, self.amp, keep=keep
        )

    def test_best(self) -> tuple[dict[str, Any] | None, tuple[CocoResult, list[Detections]] | None]:
        """Load the best val epoch's weights (the last epoch's without val) and evaluate them on test; rank 0 writes
        the outputs. Returns (best val row, test result) on rank 0."""
        ctx, dist, root = self.ctx, self.dist, self.ctx.root
        if dist.is_main and self.epochs in self.round_ends:
            keep_numbered(root, self.trainer, self.epochs)
        barrier(dist)
        best = best_row(self.history) if dist.is_main else None
        if root.exists(DETECT_BEST):
            self.net.load_state_dict(load_checkpoint(root, DETECT_BEST)["model"])
        elif dist.is_main:
            save_best(root, self.net, self.resolved, self.epochs, None)
            ctx.notes.append("no val frames: best.pt is the last epoch's weights")
        test = self.evaluate(self.ann.split("test"), keep=True)
        if dist.is_main:
            from .outputs import write_outputs

            write_outputs(ctx, self.cfg, self.ann, test, best, self.resolved, self.images)
        return best, test


def round_or_none(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def evaluate_frames(
    net: nn.Module,
    images: Store,
    frames: Sequence[Frame],
    classes: Sequence[str],
    device: torch.device,
    dist: DistInfo,
    cfg: DetectConfig,
    amp: bool,
    keep: bool = False,
) -> tuple[CocoResult, list[Detections]] | None:
    """COCOeval of the detector on `frames`, each process detecting its share (rank 0 gets the result)."""
    mine = list(range(dist.rank, len(frames), dist.world))
    found: dict[int, tuple[Detections, int, int]] = {}
    chunk = max(1, 2 * cfg.batch_size)
    share = [frames[i] for i in mine]
    at = 0
    for part, arrays in decoded(images, share, chunk, cfg.workers):
        for d, f in zip(detect(net, arrays, device, amp), part):
            found[mine[at]] = (d, f.width, f.height)
            at += 1
    gathered = gather_objects(found, dist)
    if not dist.is_main:
        return None
    merged: dict[int, tuple[Detections, int, int]] = {}
    for g in gathered:
        merged.update(g)
    dets = []
    for i, f in enumerate(frames):
        d, f.width, f.height = merged[i]
        dets.append(d)
    result = evaluate(frames, dets, classes)
    return (result, dets) if keep else (result, [])


def keep_numbered(root: Store, trainer: Trainer, epochs_done: int) -> None:
    """The checkpoint after `epochs_done` epochs (a round's end) as epoch_NNNN.pt, copied from last.pt."""
    key = checkpoint_key(epoch_name(epochs_done), DETECT_CKPT)
    trainer.writer.wait()
    last = checkpoint_key("last", DETECT_CKPT)
    if root.exists(key) or not root.exists(last):
        return
    ckpt = load_checkpoint(root, last)
    if int(ckpt.get("epoch", -1)) == epochs_done:
        root.write_bytes(key, root.read_bytes(last))


def read_val(root: Store, upto_epoch: int) -> list[dict[str, Any]]:
    if not root.exists(DETECT_VAL):
        return []
    rows = [json.loads(line) for line in root.read_bytes(DETECT_VAL).decode().splitlines() if line.strip()]
    return [r for r in rows if int(r.get("epoch", 0)) <= upto_epoch]


def best_row(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch with the highest val AP (the earliest among equals); None without val results."""
    scored = [r for r in history if r.get("AP") is not None]
    if not scored:
        return None
    top = max(float(r["AP"]) for r in scored)
    return next(r for r in scored if float(r["AP"]) == top)


def record_val(
    root: Store,
    history: list[dict[str, Any]],
    epoch: int,
    result: tuple[CocoResult, list[Detections]] | None,
    net: nn.Module,
    resolved: dict[str, Any],
) -> None:
    """Append the epoch's val figures to detect/val.jsonl; a new best val AP rewrites best.pt."""
    if result is None:
        return
    before = best_row(history)
    row = {"epoch": epoch, **result[0].stats}
    history.append(row)
    root.write_bytes(DETECT_VAL, "".join(json.dumps(r) + "\n" for r in history).encode())
    ap = row.get("AP")
    improved = ap is not None and (before is None or float(ap) > float(before["AP"]))
    if improved or (before is None and not root.exists(DETECT_BEST)):
        save_best(root, net, resolved, epoch, row)
    log.info("val after epoch %d: AP %s, AP50 %s", epoch, _fmt(row.get("AP")), _fmt(row.get("AP50")))


def save_best(root: Store, net: nn.Module, resolved: dict[str, Any], epoch: int, row: dict[str, Any] | None) -> None:
    save_checkpoint(
        root, DETECT_BEST, to_cpu({"model": net.state_dict(), "config": resolved, "epoch": epoch, "val": row})
    )


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{float(x):.3f}"


__all__ = ["GAUGES", "DetectPlan", "body", "check", "fingerprint"]
