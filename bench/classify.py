"""`plankton classify` speed: objects/s end to end against the decode-only rate of the same files, for 64–128 px
vignettes and 1024 px frames, the time breakdown, the start-up, and the peak RSS while streaming many objects.

    .venv/bin/python bench/classify.py [--vignettes 1000] [--frames 40] [--objects 1000000] [--model test_resnet]
                                      [--size 64] [--gallery 5000] [--workers -1] [--batch-size 64] [--device cpu]

A finished LUT is fabricated under a temporary root (a randomly initialised `--model`, a flat index over
`--gallery` random unit vectors, the stage chain marked finished through the contract), so the figures are the
stage's own cost, not a trained model's. End to end is `run_stage("classify", …)` on a folder of generated
PNGs: start-up (LUT, index, checkpoint, segmenter), decode and segmentation in DataLoader workers, batched
forward passes, one FAISS search per batch, Parquet writes, the sort and the samples table. Decode-only is
`imageio.decode_image` over the same files in one process. Streaming: `--objects` generated vignettes (made on
the fly by a generator input, never stored) through the same loop, RSS sampled every tenth of the way; memory is
flat when the last sample exceeds the one at 10% by under 10% + 64 MiB. Aim (issue #19): ≥ 0.3× the decode-only
rate on two cores with the tiny model.

Baseline beside it (unless --no-baseline): the vignettes also run with the backbone's BatchNorms left unfolded
(classify folds them into the convolutions, `classify.stream.fuse_for_inference`), interleaved unfused, fused,
unfused, fused, and the mean rates compared. `wait` in the breakdown is the main process idle for the next batch
(the DataLoader workers behind; it includes their start).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from loadwatch import LoadWatch  # noqa: E402

from plankton_core import artifacts as A  # noqa: E402
from plankton_core.imageio import decode_image, encode_png  # noqa: E402
from plankton_core.stage import get_stage, run_stage  # noqa: E402
from plankton_core.store import Store, open_store  # noqa: E402
from plankton_core.synth import render_frame  # noqa: E402
from plankton_core.tables import read_json, write_json, write_parquet  # noqa: E402

AIM = 0.3


def fabricate_lut(store: Store, model: str, size: int, n: int) -> None:
    """A finished lut (and its upstream chain) under `store`, marked through the contract."""
    import faiss

    from plankton_core.checkpoint import save_checkpoint
    from plankton_core.embedding import load_embedder
    from plankton_core.lut.index import save_index
    from plankton_core.lut.stage import GALLERY_SCHEMA
    from plankton_core.models import create_model

    torch.manual_seed(0)
    net = create_model(model, proj_dim=128)
    config = {"model": model, "proj_dim": 128, "size": size, "mean": [0.1] * 3, "std": [0.2] * 3}
    ckpt = {"model": net.backbone.state_dict(), "head": net.head.state_dict(), "epoch": 1, "config": config}

    def stats(cfg, ctx):
        write_json(store, A.STATS_JSON, {"mean": [0.1] * 3, "std": [0.2] * 3, "size": size})
        write_json(store, A.STATS_CLASSES, {"classes": [f"c{i}" for i in range(20)]})
        return {}

    def supcon(cfg, ctx):
        save_checkpoint(store, "supcon/ckpt/last.pt", ckpt)
        return {}

    def sweep(cfg, ctx):
        write_json(store, A.SWEEP_SELECTION, {"checkpoint_key": "supcon/ckpt/last.pt", "model": model})
        return {}

    def lut(cfg, ctx):
        embedder = load_embedder(store)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, embedder.dimension)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(embedder.dimension)
        index.add(x)
        save_index(store, A.LUT_INDEX["full"], index)
        labels = np.arange(n) % 20
        table = {
            "id": np.arange(n),
            "crop_key": [f"crop/crops/x/{i}.png" for i in range(n)],
            "class": [f"c{v}" for v in labels],
            "label": labels,
            "split": ["train"] * n,
            "source_key": [f"images/{i}.png" for i in range(n)],
        }
        table |= {c: pa.nulls(n, pa.int64()) for c in ("x0", "y0", "x1", "y1")}
        write_parquet(store, A.LUT_GALLERY["full"], pa.table(table, schema=GALLERY_SCHEMA))
        info = {**embedder.describe(), "classes": [f"c{i}" for i in range(20)], "count": n, "index_type": "flat"}
        write_json(store, A.LUT_INDEX_JSON, info | {"pruned": None, "calibration": {}})
        return {}

    for name, fn in (
        ("crop", lambda cfg, ctx: {}),
        ("stats", stats),
        ("supcon", supcon),
        ("linear-sweep", sweep),
        ("lut", lut),
    ):
        stage = replace(get_stage(name), body=fn, check=None, fingerprint=None, shard=None, merge=None)
        run_stage(stage, {"bench": True}, store, force=True)


def vignette(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    frame, _ = render_frame("diatom", rng, int(rng.integers(64, 129)), True, 1, 0.0, 4.0)
    return frame


def write_inputs(folder: Path, n_vignettes: int, n_frames: int) -> tuple[Path, Path]:
    vig, frames = folder / "vignettes", folder / "frames"
    for sample in range(4):
        (vig / f"s{sample}").mkdir(parents=True)
        (frames / f"s{sample}").mkdir(parents=True)
    for i in range(n_vignettes):
        (vig / f"s{i % 4}" / f"v{i:06d}.png").write_bytes(encode_png(vignette(i)))
    rng = np.random.default_rng(1)
    for i in range(n_frames):
        frame, _ = render_frame("diatom", rng, 1024, True, 12, 0.1, 4.0)
        (frames / f"s{i % 4}" / f"f{i:05d}.png").write_bytes(encode_png(frame))
    return vig, frames


def decode_rate(folder: Path) -> tuple[float, int]:
    files = sorted(folder.rglob("*.png"))
    t = time.perf_counter()
    for f in files:
        decode_image(f.read_bytes())
    return len(files) / (time.perf_counter() - t), len(files)


def end_to_end(
    store: Store, folder: Path, name: str, objects: str, args: argparse.Namespace, fused: bool = True
) -> dict:
    """One `run_stage("classify", …)`; `fused` False: the backbone's BatchNorms left unfolded (the baseline)."""
    from plankton_core.classify import ClassifyConfig
    from plankton_core.classify import stream as classify_stream

    cfg = ClassifyConfig(
        input=str(folder),
        name=name,
        objects=objects,
        workers=args.workers,
        batch_size=args.batch_size,
        device=args.device,
        thumbnails=4,
    )
    keep = classify_stream.fuse_for_inference
    if not fused:
        classify_stream.fuse_for_inference = lambda clf: False  # type: ignore[assignment]
    try:
        t = time.perf_counter()
        run_stage("classify", cfg, store, force=True)
        seconds = time.perf_counter() - t
    finally:
        classify_stream.fuse_for_inference = keep
    counts = read_json(store, f"classify/{name}/run.json")["counts"]
    return {"seconds": seconds, "objects": counts["objects"], "inputs": counts["inputs"], "parts": counts["seconds"]}


def startup(store: Store) -> float:
    """Seconds from nothing loaded to a Classifier and a cropper ready (the LUT, index, checkpoint, segmenter)."""
    from plankton_core.classify import ClassifyConfig
    from plankton_core.inference import Classifier, Cropper

    t = time.perf_counter()
    Classifier(store, ClassifyConfig(name="x"))
    Cropper(store)
    return time.perf_counter() - t


def forward_ab(store: Store, args: argparse.Namespace, rounds: int = 12) -> tuple[float, float, float]:
    """Median ms per batch of the forward pass, unfused and fused backbone, alternated batch by batch (so both see
    the same load), and the largest feature difference."""
    from types import SimpleNamespace

    from plankton_core.classify.stream import fuse_for_inference
    from plankton_core.data import preprocess_crop
    from plankton_core.embedding import load_embedder

    eager, fused = load_embedder(store), load_embedder(store)
    fuse_for_inference(SimpleNamespace(embedder=fused))  # type: ignore[arg-type]
    batch = np.stack([preprocess_crop(vignette(i), eager.size, eager.preprocess) for i in range(args.batch_size)])
    times: dict[str, list[float]] = {"eager": [], "fused": []}
    for _ in range(rounds):
        for name, emb in (("eager", eager), ("fused", fused)):
            t = time.perf_counter()
            emb.embed(batch, args.device)
            times[name].append(1000 * (time.perf_counter() - t))
    diff = float(np.abs(eager.embed(batch, args.device) - fused.embed(batch, args.device)).max())
    return float(np.median(times["eager"])), float(np.median(times["fused"])), diff


class GenSource:
    """An input whose images are made when read (key `g<index>.png`): nothing per object is stored."""

    uri = "generated://vignettes"

    def read_bytes(self, key: str) -> bytes:
        return encode_png(vignette(int(key[1:-4])))


class GenSpec:
    def reopen(self) -> GenSource:
        return GenSource()


def rss_mib() -> float:
    """Resident memory of this process and its children (DataLoader workers), MiB."""
    pids = [os.getpid()]
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        pids += [int(v) for v in task.read_text().split()]
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def stream(store: Store, n: int, args: argparse.Namespace) -> tuple[list[tuple[int, float]], float, float]:
    """Classify `n` generated vignettes through the stage's loop and sort them as the stage does; (RSS samples
    (objects, MiB), objects/s, peak RSS MiB of this process tree)."""
    from plankton_core.classify import ClassifyConfig
    from plankton_core.classify.inputs import IMAGES, Unit
    from plankton_core.classify.stream import Tally, Work, default_workers, run_stream
    from plankton_core.crop.config import CropConfig
    from plankton_core.inference import Classifier

    clf = Classifier(store, ClassifyConfig(name="stream"))
    samples: list[tuple[int, float]] = []
    step = max(1, n // 10)

    class Sampling(Tally):
        def add(self, item) -> None:
            super().add(item)
            done = sum(self.status.values())
            if done % step == 0:
                samples.append((done, rss_mib()))

    units = lambda: (Unit(f"g{i:09d}.png", IMAGES, f"s{i // 100_000}") for i in range(n))  # noqa: E731
    work = Work(
        units,
        GenSpec(),
        (CropConfig(objects="single"), None),
        "single",
        (clf.embedder.size, clf.embedder.preprocess),
        False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "rows.parquet"
        t = time.perf_counter()
        run_stream(work, clf, local, args.batch_size, default_workers(args.workers), args.device, Sampling(4))
        rate = n / (time.perf_counter() - t)
        import duckdb

        con = duckdb.connect()
        con.execute(f"SET temp_directory = '{tmp}'")
        con.execute("SET memory_limit = '1GB'")
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{local}') ORDER BY sample_id, object_id) "
            f"TO '{tmp}/objects.parquet' (FORMAT parquet)"
        )
        samples.append((n, rss_mib()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return samples, rate, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--vignettes", type=int, default=1000, help="64–128 px vignettes (end to end and decode-only)")
    ap.add_argument("--frames", type=int, default=40, help="1024 px frames of 12 objects each")
    ap.add_argument("--objects", type=int, default=1_000_000, help="generated objects streamed for the RSS check")
    ap.add_argument("--model", default="test_resnet", help="backbone (randomly initialised)")
    ap.add_argument("--size", type=int, default=64, help="model input size")
    ap.add_argument("--gallery", type=int, default=5000, help="gallery vectors in the flat index")
    ap.add_argument("--workers", type=int, default=-1, help="DataLoader workers; -1 = cores - 1")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unfused-backbone runs of the vignettes")
    args = ap.parse_args()
    with LoadWatch() as watch, tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PLANKTON_CACHE_DIR", os.path.join(tmp, "cache"))
        store = open_store(os.path.join(tmp, "root"))
        fabricate_lut(store, args.model, args.size, args.gallery)
        vig, frames = write_inputs(Path(tmp, "in"), args.vignettes, args.frames)
        start = startup(store)
        print(
            f"classify bench: model {args.model} at {args.size} px, {args.gallery} gallery vectors, "
            f"device {args.device}, workers {args.workers}, batch {args.batch_size}"
        )
        print(f"start-up (LUT, index, checkpoint, segmenter loaded): {start:.2f} s (aim < 3 s on a warm cache)")
        if not args.no_baseline:
            slow, fast, diff = forward_ab(store, args)
            print(
                f"forward pass of {args.batch_size} objects, medians of alternated batches: unfused {slow:.1f} ms, "
                f"BatchNorm folded {fast:.1f} ms = {slow / fast:.2f}× faster; largest feature difference {diff:.1e}"
            )
        print(
            f"{'input':<28}{'files':>7}{'objects':>9}{'decode-only/s':>15}{'e2e objects/s':>15}{'e2e files/s':>13}"
            f"{'ratio':>7}   breakdown (s): decode segment embed search write wait"
        )
        ratios, rates = [], {}
        runs = [("vignettes 64–128 px", vig, "single", True), ("frames 1024 px", frames, "frames", True)]
        if not args.no_baseline:  # the same vignettes with the backbone unfused, before and after the fused run
            runs = [("vignettes, unfused", vig, "single", False), runs[0], ("vignettes, unfused 2", vig, "single",
                    False), ("vignettes 64–128 px 2", vig, "single", True), runs[1]]  # fmt: skip
        for label, folder, objects, fused in runs:
            if not any(folder.rglob("*.png")):
                continue
            dec, files = decode_rate(folder)
            e2e = end_to_end(store, folder, label.split()[0].strip(","), objects, args, fused)
            per_file = files / e2e["seconds"]
            ratio = per_file / dec
            rates.setdefault((objects, fused), []).append(per_file)
            if fused:
                ratios.append(ratio)
            parts = " ".join(
                f"{e2e['parts'].get(k, 0.0):.2f}" for k in ("decode", "segment", "embed", "search", "write", "wait")
            )
            print(
                f"{label:<28}{files:>7}{e2e['objects']:>9}{dec:>15.1f}{e2e['objects'] / e2e['seconds']:>15.1f}"
                f"{per_file:>13.1f}{ratio:>7.3f}   {parts}"
            )
        print(
            "(ratio = end-to-end files/s ÷ decode-only files/s of the same files; decode/segment summed over workers)"
        )
        if rates.get(("single", False)) and rates.get(("single", True)):
            before, after = (float(np.mean(rates[("single", f)])) for f in (False, True))
            print(f"vignettes end to end, fused ÷ unfused backbone (mean of 2 runs each, interleaved): "
                  f"{after:.1f} ÷ {before:.1f} files/s = {after / before:.2f}×")  # fmt: skip
        if ratios:
            print(watch.verdict(min(ratios) >= AIM, f"end to end ≥ {AIM}× the decode-only rate"))
        print(watch.verdict(start < 3.0, "start-up under 3 s"))
        if args.objects:
            samples, rate, peak = stream(store, args.objects, args)
            print(
                f"streaming {args.objects} generated objects: {rate:.1f} objects/s; RSS (process tree, MiB) by "
                f"objects done: " + ", ".join(f"{n}: {m:.0f}" for n, m in samples)
            )
            first = samples[0][1]
            last = max(m for _, m in samples)
            print(f"peak RSS of the main process {peak:.0f} MiB; last/first sample {last / first:.2f}×")
            print(watch.verdict(last <= first * 1.1 + 64, "memory flat in the number of objects"))


if __name__ == "__main__":
    main()
