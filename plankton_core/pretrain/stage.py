"""The pretrain stage body: self-supervised MoCo v2 or SimCLR on the crops, labelled or not.

Input: every crop the crop stage kept (its manifest, through artifacts) but the
test split's (`--include-test` adds them: run.json's `test_images_seen` counts
them, and evaluate flags the test figures of a backbone that saw them), plus
the images under `--unlabeled URI`. With `--crop` those go through the crop
stage first: the crop stage runs, under the contract, on a root of its own under
pretrain/unlabeled/ with the settings the main crop stage recorded (so they
are segmented like the labelled ones), and its kept crops are added.

The rest is the supcon contract, reused: `plankton_core.training` (Trainer,
train_one_epoch, warmup_cosine, checkpoints under pretrain/ckpt/, `--resume
auto`, SIGTERM → 75, NaN → 2, metrics.jsonl and gauges), the decode cache and
the batched views (`plankton_core.augment`; `--augment` in pretrain/augment.py),
DDP under torchrun. A checkpoint holds the query network as `model` and `head`
(what supcon `--init pretrain`, linear-sweep `--source pretrain`, evaluate and
lut read) and, for MoCo, the key encoder and the queue under `moco`, so a
resume is exact.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, cast

import numpy as np
import pyarrow.compute as pc
import torch
from torch import nn

from ..artifacts import CROP_MANIFEST, CROP_RUN, PRETRAIN_CKPT, PRETRAIN_METRICS, PRETRAIN_UNLABELED
from ..checkpoint import load_pretrained_state
from ..config import config_dict, from_recorded
from ..data import ImageCache, load_normalisation, load_splits
from ..errors import BadInputError
from ..imageio import is_image_key
from ..losses import supcon_loss
from ..models import SupConModel, create_model
from ..stage import StageContext, content_fingerprint, get_stage, run_stage
from ..store import Store, open_store
from ..tables import read_json, read_parquet
from ..training import (
    DistInfo,
    ResumePoint,
    Trainer,
    TrainingRun,
    choose_resume,
    epoch_gauges,
    warmup_cosine,
)
from ..training.distributed import barrier, gather_with_grad, node_first
from ..training.glue import distribute, epoch_runner, process_device, training_process
from ..training.loader import Batch, CachedBatchLoader, EpochPlan, with_views
from .augment import V2Views
from .config import TRAJECTORY_FIELDS, PretrainConfig
from .moco import MoCoKeys, MoCoStep

log = logging.getLogger("plankton.pretrain")

GAUGES = epoch_gauges("pretrain")
UNLABELED_TAG = "@unlabeled/"  # cache keys of --unlabeled images read in place (without --crop)


@dataclass
class PretrainPlan:
    """What `check` found (ctx.plan)."""

    device: torch.device
    size: int
    mean: list[float]
    std: list[float]
    crop_keys: list[str]  # kept crops of the crop stage (keys under the root)
    test_images: int  # how many of them are test-split crops (0 unless --include-test)
    unlabeled: Store | None
    unlabeled_keys: list[str]  # without --crop: image keys under --unlabeled
    unlabeled_fingerprint: dict[str, Any] | None
    resolved: dict[str, Any]
    resume: ResumePoint


def listing(store: Store) -> Iterator[tuple[str, int]]:
    """(key, size) of the image files under an --unlabeled store (hidden files skipped)."""
    for key, size in store.list_sizes(""):
        if is_image_key(key) and not any(p.startswith(".") for p in key.split("/")):
            yield key, size


def unlabeled_input(cfg: PretrainConfig, ctx: StageContext) -> tuple[Store | None, list[str], dict[str, Any] | None]:
    if not cfg.unlabeled:
        return None, [], None
    store = open_store(cfg.unlabeled, ctx.s3_endpoint)
    root = ctx.root.uri.rstrip("/")
    if store.uri.rstrip("/") == root or root.startswith(store.uri.rstrip("/") + "/"):
        raise BadInputError(f"--unlabeled {store.uri} must not contain the pipeline root {ctx.root.uri}")
    digest, keys = hashlib.sha256(), []
    for key, size in listing(store):
        digest.update(f"{key}\t{size}\n".encode())
        keys.append(key)
    if not keys:
        raise BadInputError(
            f"no images under --unlabeled {store.uri} (JPEG, PNG, TIFF or BMP files)"
            + ("" if store.is_dir() else ": it does not exist")
        )
    if cfg.crop and not any("/" in k for k in keys):
        raise BadInputError(
            f"--crop reads --unlabeled {store.uri} as the crop stage reads its input: "
            "put the images in sub-folders (<folder>/<image>)"
        )
    fingerprint = {"uri": store.uri, "files": len(keys), "listing_sha256": digest.hexdigest()[:16]}
    if cfg.fingerprint == "content":  # each file's bytes too, not only its name and size
        fingerprint["content_sha256"] = content_fingerprint(store, keys)
    return store, keys, fingerprint


def check(cfg: PretrainConfig, ctx: StageContext) -> PretrainPlan:
    """Validate config and inputs, and choose the resume point; touches no output."""
    cfg.validate()
    root = ctx.root
    world, device = process_device(cfg.device)
    mean, std, stats_size = load_normalisation(root)
    size = cfg.size or stats_size
    manifest = read_parquet(root, CROP_MANIFEST, columns=["status", "crop_key"]) if root.exists(CROP_MANIFEST) else None
    if manifest is None:
        raise BadInputError(f"no {root.uri}/{CROP_MANIFEST}; rerun `plankton crop`")
    kept = manifest.filter(pc.equal(manifest.column("status"), "kept"))
    crop_keys = [str(k) for k in kept.column("crop_key").to_pylist() if k]
    test = set(str(k) for k in load_splits(root, "test").column("crop_key").to_pylist())
    if not cfg.include_test:
        crop_keys = [k for k in crop_keys if k not in test]
    unseen = set(str(k) for k in load_splits(root, "unseen").column("crop_key").to_pylist())  # near-OOD: never seen
    crop_keys = [k for k in crop_keys if k not in unseen]
    test_images = sum(k in test for k in crop_keys)
    unlabeled, unlabeled_keys, fingerprint = unlabeled_input(cfg, ctx)
    if cfg.batch_size % world:
        raise BadInputError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    known = len(crop_keys) + (0 if cfg.crop else len(unlabeled_keys))
    if not cfg.crop and known < cfg.batch_size:
        raise BadInputError(f"--batch-size {cfg.batch_size} is larger than the {known} images to pretrain on; lower it")
    resolved = config_dict(cfg) | {
        "size": size,
        "mean": list(mean),
        "std": list(std),
        "lr": cfg.lr(),
        "warmup_epochs_used": cfg.warmup(),
        "stats_digest": ctx.upstream.get("stats", ""),
        "crop_digest": read_json(root, CROP_RUN).get("digest", "") if root.exists(CROP_RUN) else "",
        "unlabeled_listing": fingerprint,
        "world_size": world,
    }
    trajectory = TRAJECTORY_FIELDS + ("stats_digest", "crop_digest", "unlabeled_listing")
    resume = choose_resume(root, PRETRAIN_CKPT, cfg.resume, resolved, trajectory, ctx.s3_endpoint)
    return PretrainPlan(
        device,
        size,
        list(mean),
        list(std),
        crop_keys,
        test_images,
        unlabeled,
        unlabeled_keys,
        fingerprint,
        resolved,
        resume,
    )


def fingerprint(cfg: PretrainConfig, ctx: StageContext) -> dict[str, Any] | None:
    """The --unlabeled listing (taken by `check`): a new or changed file makes the stage rerun."""
    return cast(PretrainPlan, ctx.plan).unlabeled_fingerprint


def crop_unlabeled(cfg: PretrainConfig, ctx: StageContext) -> list[str]:
    """`--crop`: the crop stage, under the contract, on pretrain/unlabeled/; its kept crops as keys under the root."""
    crop = get_stage("crop")
    recorded = read_json(ctx.root, CROP_RUN).get("config") if ctx.root.exists(CROP_RUN) else None
    crop_cfg: Any = replace(from_recorded(crop.config, recorded), input=cfg.unlabeled, fingerprint=cfg.fingerprint)
    sub = ctx.root.child(PRETRAIN_UNLABELED)
    result = run_stage(crop, crop_cfg, sub, force=ctx.force, s3_endpoint=ctx.s3_endpoint, rank=0)
    ctx.notes.append(f"--unlabeled cropped into {result.uri}" + (" (up to date)" if result.up_to_date else ""))
    return unlabeled_crop_keys(ctx.root)


def unlabeled_crop_keys(root: Store) -> list[str]:
    sub = root.child(PRETRAIN_UNLABELED)
    manifest = read_parquet(sub, CROP_MANIFEST, columns=["status", "crop_key"])
    kept = manifest.filter(pc.equal(manifest.column("status"), "kept"))
    return [f"{PRETRAIN_UNLABELED}/{k}" for k in kept.column("crop_key").to_pylist() if k]


class RootAndUnlabeled:
    """What the decode cache reads: keys under the root, and `@unlabeled/<key>` from the --unlabeled store."""

    def __init__(self, root: Store, unlabeled: Store | None):
        self.root, self.unlabeled = root, unlabeled
        self.uri = root.uri if unlabeled is None else f"{root.uri}+{unlabeled.uri}"

    def exists(self, key: str) -> bool:
        return self.root.exists(key)

    def read_bytes(self, key: str) -> bytes:
        if key.startswith(UNLABELED_TAG) and self.unlabeled is not None:
            return self.unlabeled.read_bytes(key[len(UNLABELED_TAG) :])
        return self.root.read_bytes(key)


def decode_cache(
    reader: RootAndUnlabeled, keys: list[str], size: int, dist: DistInfo, geometry: bool = False
) -> ImageCache:
    """The uint8 decode cache: the first process of each node fills it, the others open it; with `geometry`, each
    image's pixel rectangle too (`--augment mocov2` crops the image's own pixels)."""
    store = cast(Store, reader)
    return node_first(dist, lambda: ImageCache.build(store, keys, size, geometry=geometry))


def note_test_images(ctx: StageContext, plan: PretrainPlan) -> None:
    """Say when the test split's crops are among the images pretrained on (`--include-test`)."""
    if plan.test_images:
        ctx.notes.append(
            f"--include-test: pretraining on {plan.test_images} test-split crops (without labels); test figures of "
            "a backbone from this run are optimistic (evaluate and the report say so)"
        )


def body(cfg: PretrainConfig, ctx: StageContext) -> dict[str, Any]:
    """Pretrain to `cfg.epochs` from the resume point, on this process's share of every global batch."""
    plan: PretrainPlan = ctx.plan
    device = plan.device
    with training_process(device, cfg.deterministic) as (dist, stop):
        keys, extra_keys = pretrain_keys(cfg, ctx, plan, dist)
        resolved = resolve_run(cfg, plan, keys, extra_keys)
        cache = decode_cache(
            RootAndUnlabeled(ctx.root, plan.unlabeled), keys, plan.size, dist, geometry=cfg.augment == "mocov2"
        )
        run = TrainingRun(
            stage="pretrain",
            ckpt_prefix=PRETRAIN_CKPT,
            metrics_key=PRETRAIN_METRICS,
            epochs=cfg.epochs,
            steps_per_epoch=resolved["steps_per_epoch"],
            images_per_step=cfg.batch_size,
            save_every=cfg.save_every,
            seed=cfg.seed,
            config=resolved,
        )
        trainer = Trainer(ctx, run, dist=dist, stop=stop, device=device)
        net = build_model(cfg, ctx, fresh=plan.resume.ckpt is None)
        keys_state = MoCoKeys(net, cfg.queue, cfg.proj_dim, cfg.seed) if cfg.method == "moco" else None
        optimizer, scheduler = restore_training(cfg, plan, trainer, net, keys_state, run.steps_per_epoch)
        # MoCo keeps per-rank BatchNorm in the query encoder and shuffles the key encoder's across ranks (moco.py);
        # SimCLR uses SyncBatchNorm on GPUs, as in the SimCLR paper's global BN.
        also = [keys_state] if keys_state is not None else []
        model = distribute(
            net,
            optimizer,
            dist,
            device,
            sync_bn=cfg.method == "simclr",
            compile=cfg.compile,
            notes=ctx.notes,
            also=also,
        )
        loader, views = batch_pipeline(cfg, plan, cache, len(keys), dist)
        loss_fn = step_loss(cfg, views, keys_state, net, dist, device)
        if dist.is_main:
            log_start(cfg, plan, keys, extra_keys, keys_state, dist, run.steps_per_epoch, device)
            note_test_images(ctx, plan)
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
                desc="pretrain",
                epochs=cfg.epochs,
                lr_option="--base-lr",
            )
        )
    return counts | {
        "method": cfg.method,
        "train_images": len(keys),
        "labelled_crops": len(plan.crop_keys),
        "test_images_seen": plan.test_images,
        "unlabeled_images": len(extra_keys),
        **({"queue_bytes": keys_state.queue_bytes} if keys_state is not None else {}),
    }


def pretrain_keys(
    cfg: PretrainConfig, ctx: StageContext, plan: PretrainPlan, dist: DistInfo
) -> tuple[list[str], list[str]]:
    """(every image to pretrain on, the unlabelled ones among them): the labelled crops, then the --unlabeled
    images, read in place or (`--crop`) cropped first by the first process."""
    extra_keys: list[str] = [UNLABELED_TAG + k for k in plan.unlabeled_keys]
    if cfg.crop:
        if dist.is_main:
            crop_unlabeled(cfg, ctx)
        barrier(dist)
        extra_keys = unlabeled_crop_keys(ctx.root)
    keys = plan.crop_keys + extra_keys
    if len(keys) < cfg.batch_size:
        raise BadInputError(
            f"--batch-size {cfg.batch_size} is larger than the {len(keys)} images to pretrain on; lower it"
        )
    return keys, extra_keys


def resolve_run(cfg: PretrainConfig, plan: PretrainPlan, keys: list[str], extra_keys: list[str]) -> dict[str, Any]:
    """The config every checkpoint records, with the image counts; an exact resume needs the same number of
    images."""
    steps_per_epoch = len(keys) // cfg.batch_size
    resolved = plan.resolved | {
        "train_images": len(keys),
        "labelled_crops": len(plan.crop_keys),
        "test_images_seen": plan.test_images,
        "unlabeled_images": len(extra_keys),
    }
    resolved["steps_per_epoch"] = steps_per_epoch
    saved = plan.resume.ckpt.get("config", {}) if plan.resume.ckpt else {}
    if plan.resume.ckpt is not None and plan.resume.exact and saved.get("train_images") not in (None, len(keys)):
        raise BadInputError(
            f"{plan.resume.label} was trained on {saved.get('train_images')} images, now {len(keys)}; "
            "--resume never starts over, --resume last continues with the new set"
        )
    return resolved


def restore_training(
    cfg: PretrainConfig,
    plan: PretrainPlan,
    trainer: Trainer,
    net: SupConModel,
    keys_state: MoCoKeys | None,
    steps_per_epoch: int,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and its warm-up + cosine schedule; weights, MoCo's keys and queue restored from the resume
    point."""
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr(), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    schedule = partial(
        warmup_cosine,
        peak_lr=cfg.lr(),
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=cfg.warmup() * steps_per_epoch,
        min_ratio=cfg.min_lr_ratio,
    )
    state: dict[str, Any] = {"model": net.backbone, "head": net.head}
    if keys_state is not None:
        state["moco"] = keys_state
    extra = {"feature_dim": net.feature_dim} | (
        {"queue_bytes": keys_state.queue_bytes} if keys_state is not None else {}
    )
    scheduler = trainer.restore(plan.resume, state, optimizer, schedule, extra=extra)
    plan.resume.ckpt = None
    return optimizer, scheduler


def batch_pipeline(
    cfg: PretrainConfig, plan: PretrainPlan, cache: ImageCache, count: int, dist: DistInfo
) -> tuple[CachedBatchLoader, V2Views]:
    """This process's batches from the decode cache, and the two augmented views of each (on the loader threads
    when training on CPU)."""
    cuda = plan.device.type == "cuda"
    loader = CachedBatchLoader(
        cache.array,
        np.zeros(count, dtype=np.int64),
        EpochPlan(count, cfg.batch_size, cfg.seed),
        dist.rank,
        dist.world,
        prefetch=cfg.workers,
        pin_memory=cuda,
        geometry=cache.geometry,
    )
    b = loader.local_batch
    views = V2Views(
        cfg.batch_size,
        slice(dist.rank * b, (dist.rank + 1) * b),
        cfg.seed,
        cfg.crop_scale_min,
        cfg.jitter,
        cfg.grayscale,
        cfg.blur,
        plan.size,
        plan.mean,
        plan.std,
        plan.device,
        recipe=cfg.augment,
    )
    if not cuda and cfg.workers > 0:
        loader.transform = partial(with_views, views=views)
    return loader, views


def step_loss(
    cfg: PretrainConfig,
    views: V2Views,
    keys_state: MoCoKeys | None,
    net: SupConModel,
    dist: DistInfo,
    device: torch.device,
) -> MoCoStep | SimCLRStep:
    """`loss_fn` of one training step: MoCo's against the key encoder and queue, or SimCLR's."""
    amp = cfg.amp and device.type == "cuda"
    if keys_state is not None:
        return MoCoStep(
            views, keys_state, net, dist, cfg.temperature, cfg.key_momentum, cfg.batch_size, cfg.seed, amp, device
        )
    return SimCLRStep(views, dist, cfg.temperature, amp, device)


def log_start(
    cfg: PretrainConfig,
    plan: PretrainPlan,
    keys: list[str],
    extra_keys: list[str],
    keys_state: MoCoKeys | None,
    dist: DistInfo,
    steps_per_epoch: int,
    device: torch.device,
) -> None:
    log.info(
        "pretrain %s: %s, %d images (%d labelled crops, %d unlabelled), global batch %d on %d process(es), "
        "lr %.4g, %d steps/epoch, device %s%s",
        cfg.method,
        cfg.model,
        len(keys),
        len(plan.crop_keys),
        len(extra_keys),
        cfg.batch_size,
        dist.world,
        cfg.lr(),
        steps_per_epoch,
        device,
        f", queue {cfg.queue} ({keys_state.queue_bytes / 2**20:.1f} MiB)" if keys_state is not None else "",
    )


def build_model(cfg: PretrainConfig, ctx: StageContext, fresh: bool) -> SupConModel:
    """The query network, with the same initial weights on every process; `--pretrained` only when starting fresh."""
    torch.manual_seed(cfg.seed)
    pretrained = load_pretrained_state(cfg.pretrained, ctx.s3_endpoint) if fresh and cfg.pretrained else None
    net = create_model(cfg.model, proj_dim=cfg.proj_dim, pretrained_state=pretrained)
    if pretrained is not None:
        ctx.notes.append(f"backbone initialised from {cfg.pretrained}")
    return net


@dataclass
class SimCLRStep:
    """`loss_fn` for SimCLR: both views through the model, projections gathered over ranks, NT-Xent over the global
    batch."""

    views: V2Views
    dist: DistInfo
    temperature: float
    amp: bool
    device: torch.device

    def __call__(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x = (
            batch.views
            if batch.views is not None
            else self.views(batch.images, batch.epoch, batch.step, batch.geometry)
        )
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            z = model(x)
        z = torch.stack(z.float().split(len(batch.images)), dim=1)  # (b, 2 views, dim)
        z_all = gather_with_grad(z, self.dist)
        return supcon_loss(z_all, None, self.temperature, "simclr", anchor_rows=self.views.rows)


__all__ = ["GAUGES", "PretrainPlan", "SimCLRStep", "body", "check", "fingerprint"]
