"""The supcon stage body: contrastive training of a timm backbone, resumable, observable, one or many GPUs.

Every process, alone or one of `torchrun`'s, runs the stage under the
contract (`run_stage` with its $RANK): `check` validates the config and the
train split and chooses the checkpoint to resume from before any output is
touched; `body` joins the process group and trains. The shared trainer
(`plankton_core.training`) owns checkpoints, resume, SIGTERM, the NaN stop and
the metrics; this module owns what is SupCon: the model, the two augmented
views, the contrastive loss, the optimiser and its schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifacts import CROP_RUN, PRETRAIN_CKPT, STATS_SPLITS, SUPCON_CKPT, SUPCON_METRICS
from ..augment import AugmentSpec, TwoViews
from ..checkpoint import checkpoint_key, load_pretrained_state, state_dict_from_file
from ..config import config_dict
from ..data import ImageCache, load_normalisation, load_splits
from ..errors import BadInputError
from ..losses import supcon_loss
from ..models import SupConModel, create_model
from ..stage import StageContext, require_upstream
from ..store import Store, open_store
from ..tables import read_json
from ..training import (
    DistInfo,
    ResumePoint,
    Trainer,
    TrainingRun,
    choose_resume,
    epoch_gauges,
    warmup_cosine,
)
from ..training.distributed import gather_with_grad, node_first
from ..training.glue import distribute, epoch_runner, process_device, training_process
from ..training.loader import Batch, CachedBatchLoader, EpochPlan, with_views
from ..training.schedule import supcontrast_schedule
from .config import SUPCONTRAST_WARMUP_FROM, TRAJECTORY_FIELDS, SupConConfig

log = logging.getLogger("plankton.supcon")

# The loss the loop uses; a module attribute so tests can swap in a diverging (or signalling) one.
contrastive_loss: Callable[..., torch.Tensor] = supcon_loss

# Prometheus gauges set every epoch, exported as plankton_<name>{stage="supcon"}.
GAUGES = epoch_gauges("supcon")


@dataclass
class SupConPlan:
    """What `check` found: the run's inputs, resolved settings and resume point (ctx.plan)."""

    device: torch.device
    size: int
    mean: list[float]
    std: list[float]
    keys: list[str]
    labels: np.ndarray
    steps_per_epoch: int
    resolved: dict[str, Any]  # the config every checkpoint records
    resume: ResumePoint


def check(cfg: SupConConfig, ctx: StageContext) -> SupConPlan:
    """Validate the config against the train split and choose the resume point; touches no output."""
    root = ctx.root
    world, device = process_device(cfg.device)
    mean, std, stats_size = load_normalisation(root, cfg.effective_preprocess())  # keep-scale: its own figures
    size = cfg.size or stats_size
    train = load_splits(root, "train")
    keys = [str(k) for k in train.column("crop_key").to_pylist()]
    labels = np.asarray(train.column("label").to_pylist(), dtype=np.int64)
    if not keys:
        raise BadInputError(f"no train crops in {root.uri}/{STATS_SPLITS}; rerun `plankton stats`")
    if len(keys) < cfg.batch_size:
        raise BadInputError(f"--batch-size {cfg.batch_size} is larger than the {len(keys)} train crops; lower it")
    if cfg.batch_size % world:
        raise BadInputError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    steps_per_epoch = len(keys) // cfg.batch_size
    resolved = config_dict(cfg) | {
        "size": size,
        "mean": list(mean),
        "std": list(std),
        "lr": cfg.lr(),
        "warmup_epochs_used": cfg.warmup(),
        "preprocess": cfg.effective_preprocess(),  # what every downstream feature extraction uses (embedding.py)
        "stats_digest": ctx.upstream.get("stats", ""),
        "train_images": len(keys),
        "steps_per_epoch": steps_per_epoch,
        "world_size": world,
    }
    if cfg.init == "pretrain":  # the pretrain run's digest enters supcon's: a new pretrain run means retraining
        ctx.upstream = ctx.upstream | require_upstream(root, ["pretrain"])
        resolved["pretrain_digest"] = ctx.upstream["pretrain"]
    resume = choose_resume(
        root,
        SUPCON_CKPT,
        cfg.resume,
        resolved,
        TRAJECTORY_FIELDS + ("stats_digest", "train_images", "pretrain_digest"),
        ctx.s3_endpoint,
    )
    return SupConPlan(device, size, list(mean), list(std), keys, labels, steps_per_epoch, resolved, resume)


def body(cfg: SupConConfig, ctx: StageContext) -> dict[str, Any]:
    """Train to `cfg.epochs` from the resume point, on this process's share of every global batch."""
    plan: SupConPlan = ctx.plan
    device, cuda = plan.device, plan.device.type == "cuda"
    with training_process(device, cfg.deterministic) as (dist, stop):
        spec = augment_spec(cfg)
        cache = decode_cache(
            ctx.root, plan.keys, plan.size, dist, spec, cfg.context, crop_input(ctx), cfg.effective_preprocess()
        )
        ctx.notes.extend(cache.notes)
        geometry = cache.geometry
        if geometry is not None and cfg.boxes == "attention":
            geometry = with_attention_boxes(cache, cfg, ctx, device)
        run = TrainingRun(
            stage="supcon",
            ckpt_prefix=SUPCON_CKPT,
            metrics_key=SUPCON_METRICS,
            epochs=cfg.epochs,
            steps_per_epoch=plan.steps_per_epoch,
            images_per_step=cfg.batch_size,
            save_every=cfg.save_every,
            seed=cfg.seed,
            config=plan.resolved,
        )
        trainer = Trainer(ctx, run, dist=dist, stop=stop, device=device)

        net = build_model(cfg, ctx, fresh=plan.resume.ckpt is None)
        optimizer, scheduler = restore_training(cfg, plan, trainer, net)
        model = distribute(net, optimizer, dist, device, sync_bn=cfg.sync_bn, compile=cfg.compile, notes=ctx.notes)
        loader, views = batch_pipeline(cfg, plan, cache.array, geometry, dist, spec)
        loss_fn = ContrastiveStep(
            views, dist, cfg.temperature, cfg.method, amp=cfg.amp and cuda, base_temperature=cfg.base_temperature
        )
        if dist.is_main:
            log.info(
                "supcon: %s, %d train crops, global batch %d on %d process(es), lr %.4g (base %.4g per 256), "
                "%d steps/epoch, device %s",
                cfg.model,
                len(plan.keys),
                cfg.batch_size,
                dist.world,
                cfg.lr(),
                cfg.base_lr,
                run.steps_per_epoch,
                device,
            )
        counts = trainer.fit(
            epoch_runner(
                model,
                loader,
                loss_fn,
                optimizer,
                scheduler,
                dist=dist,
                stop=stop,
                device=device,
                desc="supcon",
                epochs=cfg.epochs,
                lr_option="--base-lr",
            )
        )
    return counts | {"train_images": len(plan.keys)}


def lr_schedule(cfg: SupConConfig, steps_per_epoch: int) -> Callable[..., Any]:
    """`--recipe supcontrast`: SupContrast's per-epoch cosine, warm-up only for batches over 256; otherwise a
    per-step warm-up then cosine."""
    if cfg.recipe == "supcontrast":
        return partial(
            supcontrast_schedule,
            peak_lr=cfg.lr(),
            epochs=cfg.epochs,
            steps_per_epoch=steps_per_epoch,
            warm_epochs=cfg.warmup(),
            warmup_from=SUPCONTRAST_WARMUP_FROM,
            min_ratio=cfg.min_lr_ratio,
        )
    return partial(
        warmup_cosine,
        peak_lr=cfg.lr(),
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=cfg.warmup() * steps_per_epoch,
        min_ratio=cfg.min_lr_ratio,
    )


def restore_training(
    cfg: SupConConfig, plan: SupConPlan, trainer: Trainer, net: SupConModel
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and its schedule, with the weights restored from the resume point."""
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr(), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    schedule = lr_schedule(cfg, trainer.run.steps_per_epoch)
    scaler = torch.amp.GradScaler(
        plan.device.type, enabled=False
    )  # bf16 needs no loss scaling; kept for the checkpoint format
    scheduler = trainer.restore(
        plan.resume,
        {"model": net.backbone, "head": net.head, "scaler": scaler},
        optimizer,
        schedule,
        extra={"feature_dim": net.feature_dim},
    )
    plan.resume.ckpt = None  # restored: let the memory go
    return optimizer, scheduler


def batch_pipeline(
    cfg: SupConConfig,
    plan: SupConPlan,
    images: np.ndarray,
    geometry: np.ndarray | None,
    dist: DistInfo,
    spec: AugmentSpec,
) -> tuple[CachedBatchLoader, TwoViews]:
    """This process's batches from the decode cache, and the two augmented views of each."""
    cuda = plan.device.type == "cuda"
    loader = CachedBatchLoader(
        images,
        plan.labels,
        EpochPlan(len(plan.keys), cfg.batch_size, cfg.seed),
        dist.rank,
        dist.world,
        prefetch=cfg.workers,
        pin_memory=cuda,
        geometry=geometry,
    )
    b = loader.local_batch
    views = TwoViews(
        cfg.batch_size,
        slice(dist.rank * b, (dist.rank + 1) * b),
        cfg.seed,
        cfg.crop_scale_min,
        cfg.jitter,
        plan.size,
        plan.mean,
        plan.std,
        plan.device,
        spec,
    )
    if not cuda and cfg.workers > 0:  # augment on the loader threads, overlapping the model step
        loader.transform = partial(with_views, views=views)
    return loader, views


def augment_spec(cfg: SupConConfig) -> AugmentSpec:
    return AugmentSpec(
        recipe=cfg.recipe, crop_mode=cfg.crop_mode, scale_min=cfg.crop_scale_min, jitter=cfg.jitter, loc_thr=cfg.loc_thr
    )


def crop_input(ctx: StageContext) -> Store | None:
    """The crop stage's input (source frames for context crops), when its run.json names one that can be opened."""
    try:
        uri = (read_json(ctx.root, CROP_RUN).get("config") or {}).get("input")
        return open_store(str(uri), ctx.s3_endpoint) if uri else None
    except (BadInputError, OSError, ValueError):
        return None


def decode_cache(
    root: Store,
    keys: list[str],
    size: int,
    dist: DistInfo,
    spec: AugmentSpec | None = None,
    context: float = 0.5,
    source: Store | None = None,
    preprocess: str = "letterbox",
) -> ImageCache:
    """The uint8 decode cache of the train crops: the first process of each node fills it, the others open it.
    `preprocess` keep-scale trains on crops at their own scale (the other choices train on letterboxed crops).

    With a spec that needs geometry: tight crops with their pixel rectangles and boxes (supcontrast
    recipe), or context crops around the boxes (localized crop mode).
    """
    geometry = spec is not None and spec.needs_geometry
    ctx_grow = context if spec is not None and spec.crop_mode == "localized" else None

    def build() -> ImageCache:
        return ImageCache.build(
            root,
            keys,
            size,
            geometry=geometry,
            context=ctx_grow,
            source=source if ctx_grow is not None else None,
            preprocess="keep-scale" if preprocess == "keep-scale" and not geometry else "letterbox",
        )

    return node_first(dist, build)


def with_attention_boxes(cache: ImageCache, cfg: SupConConfig, ctx: StageContext, device: torch.device) -> np.ndarray:
    """The cache's geometry with the object boxes replaced by ViT-attention pseudo boxes (kept inside each pixel
    rectangle)."""
    import timm

    from ..boxes import attention_boxes

    assert cache.geometry is not None and cfg.box_weights
    try:
        vit = timm.create_model(cfg.box_model, pretrained=False, num_classes=0)
    except Exception as exc:  # timm raises RuntimeError/KeyError for unknown names
        raise BadInputError(f"supcon: --box-model {cfg.box_model!r} is not a timm model ({exc})") from None
    state = load_pretrained_state(cfg.box_weights, ctx.s3_endpoint)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if len(missing) > len(state) // 2:
        raise BadInputError(
            f"supcon: --box-weights {cfg.box_weights} does not fit {cfg.box_model} ({len(missing)} missing tensors)"
        )
    data_cfg = getattr(vit, "pretrained_cfg", {}) or {}
    side = int(getattr(vit.patch_embed, "img_size", (224, 224))[0])
    images = torch.from_numpy(np.ascontiguousarray(cache.array)).permute(0, 3, 1, 2).float()
    resized = (
        torch.nn.functional.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
        .round()
        .clamp(0, 255)
    )
    u8 = resized.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    found = attention_boxes(
        vit, u8, data_cfg.get("mean", (0.485, 0.456, 0.406)), data_cfg.get("std", (0.229, 0.224, 0.225)), device=device
    )
    geometry = np.array(cache.geometry, dtype=np.float32, copy=True)
    image = geometry[:, :4]
    boxes = found.boxes
    geometry[:, 4] = np.clip(boxes[:, 0], image[:, 0], image[:, 2])
    geometry[:, 5] = np.clip(boxes[:, 1], image[:, 1], image[:, 3])
    geometry[:, 6] = np.clip(boxes[:, 2], image[:, 0], image[:, 2])
    geometry[:, 7] = np.clip(boxes[:, 3], image[:, 1], image[:, 3])
    ctx.notes.append(f"localized crops around ViT-attention pseudo boxes ({cfg.box_model}, weights {cfg.box_weights})")
    del unexpected
    return geometry


def build_model(cfg: SupConConfig, ctx: StageContext, fresh: bool) -> SupConModel:
    """The network with the same initial weights on every process; `--pretrained` only when starting fresh."""
    torch.manual_seed(cfg.seed)
    source = checkpoint_key("last", PRETRAIN_CKPT) if cfg.init == "pretrain" else cfg.pretrained
    pretrained = None
    if (
        fresh and source and source.startswith(PRETRAIN_CKPT + "/") and ctx.root.exists(source)
    ):  # a pretrain checkpoint under the root
        pretrained = state_dict_from_file(ctx.root.read_bytes(source), f"{ctx.root.uri}/{source}")
        source = f"{ctx.root.uri}/{source}"
    elif fresh and source:
        pretrained = load_pretrained_state(source, ctx.s3_endpoint)
    net = create_model(cfg.model, proj_dim=cfg.proj_dim, pretrained_state=pretrained)
    if pretrained is not None:
        ctx.notes.append(f"backbone initialised from {source}")
    return net


@dataclass
class ContrastiveStep:
    """`loss_fn` of train_one_epoch: both views through the model, projections gathered over ranks, the loss."""

    views: TwoViews
    dist: DistInfo
    temperature: float
    method: str
    amp: bool  # bf16 autocast of the forward pass (GPU)
    base_temperature: float | None = None  # SupContrast's: loss × temperature / base_temperature

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x = (
            batch.views
            if batch.views is not None
            else self.views(batch.images, batch.epoch, batch.step, batch.geometry)
        )
        device = self.views.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
            z = model(x)
        z = torch.stack(z.float().split(len(batch.images)), dim=1)  # (b, 2 views, dim)
        z_all = gather_with_grad(z, self.dist)
        return contrastive_loss(
            z_all,
            batch.global_labels.to(device),
            self.temperature,
            self.method,
            anchor_rows=self.views.rows,
            base_temperature=self.base_temperature,
        )


__all__ = ["GAUGES", "ContrastiveStep", "SupConPlan", "body", "check", "contrastive_loss"]
