"""LUT search speed: latency p50/p99 (batch 1 and 256) and recall@1 for each index type on a 50,000 × 2048 gallery,
and `plankton query` images per second end to end.

    .venv/bin/python bench/lut.py [--n 50000] [--dim 2048] [--images 32] [--model resnet50 --size 224]

Gallery and queries: the clustered, imbalanced synthetic embeddings of
bench/prune.py (queries are held out, never gallery items). Each approximate
index is tuned on 500 queries (nprobe / efSearch raised until recall@1 ≥
0.99 against exact search, as the lut stage does) and measured on 500 others.
Batch-1 searches run on one thread (a server answers one query per thread;
OpenMP wake-ups only add jitter), batch-256 on all threads. End to end: decode
a 256-px frame, crop it with the crop stage's segmenter, letterbox, embed with
a randomly initialised `--model` at `--size`, search the HNSW index, build the row.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from loadwatch import LoadWatch  # noqa: E402
from prune import synthetic_gallery  # noqa: E402

from plankton_core.lut.index import build_index, recall_at, search_params, tune_recall  # noqa: E402


def latencies(index, queries: np.ndarray, batch: int, repeats: int, k: int = 5) -> np.ndarray:
    """Wall time (ms) of `repeats` searches of `batch` queries each."""
    times = []
    for r in range(repeats):
        start = (r * batch) % max(len(queries) - batch + 1, 1)
        q = np.ascontiguousarray(queries[start : start + batch])
        t = time.perf_counter()
        index.search(q, k)
        times.append((time.perf_counter() - t) * 1000.0)
    return np.asarray(times)


def end_to_end(gallery: np.ndarray, index, model: str, size: int, n_images: int) -> tuple[float, float]:
    """Images/s of a loaded Querier over generated frames; returns (images/s, seconds to load the LUT and
    checkpoint)."""
    import pyarrow as pa

    from plankton_core import artifacts as A
    from plankton_core.checkpoint import save_checkpoint
    from plankton_core.embedding import load_embedder
    from plankton_core.imageio import encode_png
    from plankton_core.lut.index import save_index
    from plankton_core.lut.stage import GALLERY_SCHEMA
    from plankton_core.models import create_model
    from plankton_core.query.inputs import resolve_inputs
    from plankton_core.query.service import Querier, QueryConfig
    from plankton_core.store import open_store
    from plankton_core.synth import render_frame
    from plankton_core.tables import write_json, write_parquet

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(os.path.join(tmp, "root"))
        torch.manual_seed(0)
        net = create_model(model, proj_dim=128)
        ckpt = {
            "model": net.backbone.state_dict(),
            "head": net.head.state_dict(),
            "epoch": 1,
            "config": {"model": model, "proj_dim": 128, "size": size, "mean": [0.05] * 3, "std": [0.1] * 3},
        }
        save_checkpoint(store, "supcon/ckpt/last.pt", ckpt)
        write_json(store, A.SWEEP_SELECTION, {"checkpoint_key": "supcon/ckpt/last.pt", "model": model})
        embedder = load_embedder(store)
        if embedder.dimension != gallery.shape[1]:
            raise SystemExit(
                f"--model {model} gives {embedder.dimension}-d features but the gallery is {gallery.shape[1]}-d: "
                f"pass --dim {embedder.dimension}"
            )
        n = len(gallery)
        classes = [f"class{i}" for i in range(20)]
        labels = np.arange(n) % 20
        write_parquet(
            store,
            A.LUT_GALLERY["full"],
            pa.table(
                {
                    "id": np.arange(n),
                    "crop_key": [f"crop/crops/x/{i}.png" for i in range(n)],
                    "class": [classes[v] for v in labels],
                    "label": labels,
                    "split": ["train"] * n,
                    "source_key": [f"images/{i}.png" for i in range(n)],
                    "x0": pa.nulls(n, pa.int64()),
                    "y0": pa.nulls(n, pa.int64()),
                    "x1": pa.nulls(n, pa.int64()),
                    "y1": pa.nulls(n, pa.int64()),
                },
                schema=GALLERY_SCHEMA,
            ),
        )
        save_index(store, A.LUT_INDEX["full"], index)
        write_json(
            store,
            A.LUT_INDEX_JSON,
            {
                **embedder.describe(),
                "classes": classes,
                "count": n,
                "index_type": "hnsw",
                "search_params": search_params(index),
                "pruned": None,
                "calibration": {},
            },
        )
        write_json(store, "lut/run.json", {"stage": "lut", "digest": "bench"})  # what query checks: a finished lut
        store.write_bytes("lut/_SUCCESS", b"")
        frames = Path(tmp, "frames")
        frames.mkdir()
        rng = np.random.default_rng(0)
        for i in range(n_images):
            frame, _ = render_frame("diatom", rng, 256, True, 1, 0.0, 4.0)
            (frames / f"f{i:04d}.png").write_bytes(encode_png(frame))
        refs = resolve_inputs([str(frames)], store)
        cfg = QueryConfig(k=5, batch_size=32, device="cpu")
        t = time.perf_counter()
        querier = Querier(store, cfg)  # loads the index, gallery table, checkpoint and segmenter
        load_s = time.perf_counter() - t
        querier.run(refs[:2])  # warm-up: first-call allocations
        t = time.perf_counter()
        rows = querier.run(refs)
        seconds = time.perf_counter() - t
        assert len(rows) == n_images and all(r["status"] in ("ok", "unknown") for r in rows)
        return n_images / seconds, load_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--images", type=int, default=32, help="frames for the end-to-end query figure (0 = skip)")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    with LoadWatch():
        run(args)


def run(args: argparse.Namespace) -> None:
    """The measurements, under the load watch."""
    threads = faiss.omp_get_max_threads()
    print(f"bench/lut.py on {os.cpu_count()} CPU(s), faiss threads {threads}")
    x, _ = synthetic_gallery(args.n + 1000, args.dim, seed=3)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    gallery, queries = np.ascontiguousarray(x[perm[: args.n]]), np.ascontiguousarray(x[perm[args.n :]])
    tune_q, eval_q = queries[:500], queries[500:]
    print(
        f"gallery {args.n:,} × {args.dim} float32 ({gallery.nbytes / 1e6:.0f} MB), "
        "500 tuning + 500 evaluation queries held out"
    )

    exact = build_index(gallery, "flat")
    _, exact_ids = exact.search(eval_q, 10)
    results = {}
    print(
        f"{'index':6} {'build s':>8} {'params':>14} {'recall@1':>9} {'recall@10':>10} "
        f"{'b1 p50 ms':>10} {'b1 p99 ms':>10} {'b256 p50 ms':>12} {'b256 p99 ms':>12} {'ms/query@256':>13}"
    )
    for kind in ("flat", "ivf", "hnsw"):
        t = time.perf_counter()
        index = build_index(gallery, kind)
        build_s = time.perf_counter() - t
        tune_recall(index, exact, tune_q, k=10, target=0.99)
        _, ids = index.search(eval_q, 10)
        r1, r10 = recall_at(ids, exact_ids, 1), recall_at(ids, exact_ids, 10)
        faiss.omp_set_num_threads(1)
        b1 = latencies(index, eval_q, 1, 50 if kind == "flat" else 300)
        faiss.omp_set_num_threads(threads)
        b256 = latencies(index, eval_q, 256, 4 if kind == "flat" else 10)
        params = ",".join(f"{k}={v}" for k, v in search_params(index).items()) or "exact"
        print(
            f"{kind:6} {build_s:8.1f} {params:>14} {r1:9.4f} {r10:10.4f} "
            f"{np.percentile(b1, 50):10.2f} {np.percentile(b1, 99):10.2f} "
            f"{np.percentile(b256, 50):12.1f} {np.percentile(b256, 99):12.1f} {np.percentile(b256, 50) / 256:13.3f}"
        )
        results[kind] = (index, np.percentile(b1, 50))
    print(
        f"batch-1 p50 speed-up over exact: ivf {results['flat'][1] / results['ivf'][1]:.0f}×, "
        f"hnsw {results['flat'][1] / results['hnsw'][1]:.0f}×"
    )
    if args.images:
        rate, load_s = end_to_end(gallery, results["hnsw"][0], args.model, args.size, args.images)
        print(
            f"query end to end ({args.model} at {args.size} px on CPU, HNSW index, "
            f"{args.images} frames of 256 px, batch 32): "
            f"{rate:.1f} images/s (+ {load_s:.1f} s once per call to load the LUT and checkpoint)"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
