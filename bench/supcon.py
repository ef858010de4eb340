"""Training throughput of the supcon stage's loader + step against the research-script way, side by side.

Baseline (how main_supcon.py did it): a torchvision ImageFolder over the crop PNGs,
SupContrast's TwoCropTransform (RandomResizedCrop, flip, ColorJitter, RandomGrayscale,
ToTensor, Normalize) in DataLoader worker processes, so every image is decoded with
PIL and transformed one by one in every epoch.
Ours: the uint8 memmap decode cache (built once, timed separately), CachedBatchLoader
and batched on-device augmentation, through the stage's own `train_one_epoch`.
Same model, batch, optimiser and loss; one run; prints images/s of both and the ratio.
On a CUDA machine it also measures ResNet50 at 224 px with bf16 + channels_last and
projects the hours for 1000 epochs of 33,000 images.

    .venv/bin/python bench/supcon.py            # CPU figures (defaults below)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from loadwatch import LoadWatch  # noqa: E402
from pipeline_fixtures import make_stats_root  # noqa: E402

from plankton_core.augment import TwoViews  # noqa: E402
from plankton_core.data import ImageCache, load_normalisation, load_splits  # noqa: E402
from plankton_core.losses import supcon_loss  # noqa: E402
from plankton_core.models import create_model  # noqa: E402
from plankton_core.supcon.config import SupConConfig  # noqa: E402
from plankton_core.supcon.stage import ContrastiveStep  # noqa: E402
from plankton_core.training import DistInfo, EpochStats, train_one_epoch, warmup_cosine  # noqa: E402
from plankton_core.training.loader import (  # noqa: E402
    CachedBatchLoader,
    EpochPlan,
    with_views,  # noqa: E402
)


class TwoCropTransform:
    """SupContrast's: two independently augmented views of one image."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, x):
        return [self.transform(x), self.transform(x)]


def make_optimizer(model, cfg: SupConConfig, steps_per_epoch: int):
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr(), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.lr(), cfg.epochs * steps_per_epoch, cfg.warmup() * steps_per_epoch, cfg.min_lr_ratio)
    return opt, sched


def stage_step(
    cfg: SupConConfig, loader: CachedBatchLoader, size: int, mean, std, device, workers: int
) -> ContrastiveStep:
    """The stage's loss step on one process: its two-view augmentation (on the loader threads on a CPU) and loss."""
    views = TwoViews(
        cfg.batch_size,
        slice(0, cfg.batch_size),
        cfg.seed,
        cfg.crop_scale_min,
        cfg.jitter,
        size,
        list(mean),
        list(std),
        device,
    )
    if device.type != "cuda" and workers > 0:
        loader.transform = partial(with_views, views=views)  # as the stage does on CPU
    return ContrastiveStep(views, DistInfo(), cfg.temperature, cfg.method, amp=device.type == "cuda")


def stage_epoch(model, loader: CachedBatchLoader, step: ContrastiveStep, opt, sched, epoch: int) -> EpochStats:
    """One epoch through the stage's own `train_one_epoch`."""
    cuda = step.views.device.type == "cuda"
    return train_one_epoch(
        model,
        loader.epoch(epoch),
        step,
        opt,
        sched,
        epoch=epoch,
        steps_per_epoch=len(loader),
        check_every=25 if cuda else 1,
    )


def research_dataset(store, train_keys: set[str], cfg: SupConConfig, mean, std):
    """The research script's dataset: ImageFolder over crop/crops (train crops only), SupContrast's per-image
    transforms, two views each."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size=cfg.size, scale=(0.2, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.ToTensor(),
            transforms.Normalize(mean=mean, std=std),
        ]
    )
    wanted = {str(store.path / k) for k in train_keys}
    return datasets.ImageFolder(
        str(store.path / "crop/crops"), transform=TwoCropTransform(tf), is_valid_file=lambda p: p in wanted
    )


def baseline(store, train_keys: set[str], cfg: SupConConfig, mean, std, device, workers: int) -> tuple[float, float]:
    """(images/s, seconds) of the research-script loop: PIL decode + per-image transforms every epoch."""
    dataset = research_dataset(store, train_keys, cfg, mean, std)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model).to(device)
    opt, sched = make_optimizer(model, cfg, len(loader))
    images, t0 = 0, time.perf_counter()
    for _ in range(cfg.epochs):
        model.train()
        for views, labels in loader:
            x = torch.cat(views).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                z = model(x)
            b = labels.shape[0]
            loss = supcon_loss(torch.stack(z.float().split(b), dim=1), labels.to(device), cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            images += b
        loss.detach().item()  # sync
    seconds = time.perf_counter() - t0
    return images / seconds, seconds


def ours(
    cache: ImageCache, labels: np.ndarray, cfg: SupConConfig, mean, std, device, workers: int
) -> tuple[float, float, float]:
    """(images/s, seconds, data-wait fraction) of the stage's cached loader + batched augmentation + step."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model).to(
        device, memory_format=torch.channels_last if device.type == "cuda" else torch.preserve_format
    )
    plan = EpochPlan(len(labels), cfg.batch_size, cfg.seed)
    loader = CachedBatchLoader(cache.array, labels, plan, prefetch=workers, pin_memory=device.type == "cuda")
    opt, sched = make_optimizer(model, cfg, len(loader))
    step = stage_step(cfg, loader, cfg.size, mean, std, device, workers)
    images, seconds, wait = 0, 0.0, 0.0
    for epoch in range(cfg.epochs):
        r = stage_epoch(model, loader, step, opt, sched, epoch)
        images += r.steps * cfg.batch_size
        seconds += r.seconds
        wait += r.wait_seconds
    return images / seconds, seconds, wait / seconds


def baseline_loader_only(store, train_keys: set[str], cfg: SupConConfig, mean, std, workers: int) -> float:
    """Images/s the research-script DataLoader can deliver (two views each), no model."""
    dataset = research_dataset(store, train_keys, cfg, mean, std)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers, drop_last=True
    )
    images, t0 = 0, time.perf_counter()
    for _ in range(cfg.epochs):
        for views, labels in loader:
            torch.cat(views)
            images += labels.shape[0]
    return images / (time.perf_counter() - t0)


def ours_loader_only(
    cache: ImageCache, labels: np.ndarray, cfg: SupConConfig, mean, std, device, workers: int
) -> float:
    """Images/s of the stage's cached loader + batched two-view augmentation, no model."""
    loader = CachedBatchLoader(cache.array, labels, EpochPlan(len(labels), cfg.batch_size, cfg.seed), prefetch=workers)
    views = stage_step(cfg, loader, cfg.size, mean, std, device, workers).views
    images, t0 = 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        for batch in loader.epoch(epoch):
            batch.views if batch.views is not None else views(batch.images, batch.epoch, batch.step)
            images += len(batch.labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def gpu_resnet50(
    workers: int,
    batch: int = 256,
    steps: int = 40,
    n_cached: int = 4096,
    model_name: str = "resnet50",
    size: int = 224,
    device: torch.device | None = None,
) -> None:
    """ResNet50 at 224 px, bf16 + channels_last, from a uint8 memmap through the stage's loader and step."""
    device = device or torch.device("cuda")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    cfg = SupConConfig(model=model_name, batch_size=batch, size=size, epochs=1000, device=device.type)
    with tempfile.TemporaryDirectory() as tmp:
        arr = np.lib.format.open_memmap(
            os.path.join(tmp, "u8.npy"), mode="w+", dtype=np.uint8, shape=(n_cached, size, size, 3)
        )
        arr[:] = np.random.default_rng(0).integers(0, 256, size=(1, size, size, 3), dtype=np.uint8)
        arr.flush()
        labels = np.arange(n_cached) % 50
        torch.manual_seed(0)
        model = create_model(model_name).to(
            device, memory_format=torch.channels_last if cuda else torch.preserve_format
        )
        plan = EpochPlan(n_cached, batch, 0)
        loader = CachedBatchLoader(arr, labels, plan, prefetch=workers, pin_memory=cuda)
        opt, sched = make_optimizer(model, cfg, len(loader))
        step = stage_step(cfg, loader, size, [0.05] * 3, [0.1] * 3, device, workers)
        stage_epoch(model, loader, step, opt, sched, 0)  # warm-up: cudnn autotuning, allocator
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        images, seconds, wait = 0, 0.0, 0.0
        epoch = 1
        while images < steps * batch:
            r = stage_epoch(model, loader, step, opt, sched, epoch)
            images += r.steps * batch
            seconds += r.seconds
            wait += r.wait_seconds
            epoch += 1
    ips = images / seconds
    hours = 1000 * 33_000 / ips / 3600
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
    print(
        f"GPU {name}: {model_name} {size} px bf16 channels_last, batch {batch}: {ips:,.0f} images/s, "
        f"data wait {100 * wait / seconds:.0f}%{peak}"
    )
    print(f"projected: 1000 epochs x 33,000 images = {hours:.1f} h on this GPU (the user's runs: 4-6 days)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=160, help="crops per class (half are train)")
    ap.add_argument("--source-size", type=int, default=128, help="side of the crop PNGs")
    ap.add_argument("--size", type=int, default=64, help="training crop side")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument(
        "--workers", type=int, default=2, help="DataLoader worker processes (baseline) / prefetch threads (ours)"
    )
    ap.add_argument("--device", default="cpu", help="device for the side-by-side comparison")
    ap.add_argument("--skip-gpu", action="store_true")
    args = ap.parse_args()
    with LoadWatch():
        run(args)


def run(args: argparse.Namespace) -> None:
    """The measurements, under the load watch."""
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PLANKTON_CACHE_DIR"] = os.path.join(tmp, "cache")
        store = make_stats_root(
            os.path.join(tmp, "root"), n_classes=args.classes, per_class=args.per_class, size=args.source_size
        )
        mean, std, _ = load_normalisation(store)
        train = load_splits(store, "train")
        keys = train.column("crop_key").to_pylist()
        labels = np.asarray(train.column("label").to_pylist(), dtype=np.int64)
        cfg = SupConConfig(
            model=args.model, batch_size=args.batch_size, size=args.size, epochs=args.epochs, device=args.device
        )

        t0 = time.perf_counter()
        cache = ImageCache.build(store, keys, args.source_size)
        cache_s = time.perf_counter() - t0
        ours_ips, ours_s, ours_wait = ours(cache, labels, cfg, mean, std, device, args.workers)
        base_ips, base_s = baseline(store, set(keys), cfg, mean, std, device, args.workers)
        ours_feed = ours_loader_only(cache, labels, cfg, mean, std, device, args.workers)
        base_feed = baseline_loader_only(store, set(keys), cfg, mean, std, args.workers)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {device}"
    )
    print(
        f"data: {len(keys)} train crops of {args.source_size} px PNG, {args.classes} classes; model {args.model}, "
        f"batch {args.batch_size}, {args.size} px views, {args.epochs} epochs, {args.workers} workers"
    )
    print(f"one-time decode cache build: {cache_s:.2f} s ({len(keys) / cache_s:,.0f} images/s)")
    print(
        f"baseline (ImageFolder + PIL + torchvision transforms every epoch): {base_ips:8.1f} images/s ({base_s:.1f} s)"
    )
    print(
        f"supcon stage (uint8 cache + batched augmentation):                  {ours_ips:8.1f} images/s "
        f"({ours_s:.1f} s, data wait {100 * ours_wait:.0f}%)"
    )
    print(f"training ratio (loader + step): {ours_ips / base_ips:.2f}x")
    print(
        f"loader only (two augmented views, no model): baseline {base_feed:,.0f} images/s, "
        f"supcon stage {ours_feed:,.0f} images/s, ratio {ours_feed / base_feed:.2f}x"
    )
    if torch.cuda.is_available() and not args.skip_gpu:
        gpu_resnet50(args.workers)
    else:
        print("no CUDA device: ResNet50 224 px bf16 figure and 1000-epoch projection skipped")


if __name__ == "__main__":
    main()
