"""The streaming loop: units → objects in DataLoader workers (decode, segment, letterbox) → batched forward pass →
one FAISS search per batch → rows appended to a local Parquet file; memory holds a batch, never the whole input.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..ecotaxa import reopen
from ..inference import Classifier, Cropper
from ..progress import progress
from ..shards import shard_of
from .inputs import Prepared, Unit, unit_objects

log = logging.getLogger("plankton.classify")

WRITE_EVERY = 4096  # rows buffered before a Parquet row group
SCHEMA = pa.schema(
    [
        ("object_id", pa.string()),
        ("sample_id", pa.string()),
        ("acq_id", pa.string()),
        ("source_key", pa.string()),  # relative to --input (a bin's key without extension)
        ("object", pa.int32()),  # the object's index in its image, the ROI number in a bin; -1 on error rows
        ("x0", pa.int32()),
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
        ("status", pa.string()),  # ok / unknown / no_object / error
        ("predicted", pa.string()),
        ("score", pa.float64()),
        ("best_similarity", pa.float64()),
        ("threshold", pa.float64()),
        ("ood_score", pa.float64()),  # with the LUT's open-set fit; null otherwise
        ("unknown", pa.bool_()),
        ("answer", pa.string()),  # lut (the plain LUT's vote) or the answer val chose (lut/answer.json)
        ("neighbour_classes", pa.list_(pa.string())),
        ("neighbour_similarities", pa.list_(pa.float64())),
        ("neighbour_keys", pa.list_(pa.string())),
        ("volume_ml", pa.float64()),  # the sample's analysed volume (IFCB ml_analyzed; EcoTaxa --volume-column)
        ("metadata", pa.string()),  # EcoTaxa: the row's values as JSON
        ("error", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)


@dataclass
class Work:
    """What the workers need to turn units into model inputs."""

    units: Callable[[], Iterable[Unit]]
    source_spec: Any
    crop: tuple[Any, str | None]  # (CropConfig, its auto choice) as crop/run.json records
    objects: str | None
    emb: tuple[int, str]  # the model's input size and preprocess
    keep_images: bool
    index: int = 0
    count: int = 1
    measure: bool = False  # the objects' morphometric features, for an answer that reads them


class ObjectStream(IterableDataset):
    """The shard's units split over the DataLoader's workers; each worker reopens the input and builds a cropper."""

    def __init__(self, work: Work):
        self.work = work

    def __iter__(self) -> Iterator[Prepared]:
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        w = self.work
        source = reopen(w.source_spec)
        cropper = Cropper(None, objects=w.objects, recorded=w.crop, measure=w.measure)
        mode = w.objects if w.objects in ("frames", "single") else cropper.objects
        mine = (u for u in w.units() if w.count == 1 or shard_of(u.key, w.count) == w.index)
        for j, unit in enumerate(mine):
            if j % n == wid:
                for i, item in enumerate(unit_objects(unit, source, cropper, mode, w.emb, w.keep_images)):
                    item.first = i == 0
                    yield item


@dataclass
class Tally:
    """Counts, the timing breakdown and the least certain objects per sample (for the report page)."""

    thumbnails: int
    status: Counter = field(default_factory=Counter)
    units: int = 0
    bad_units: int = 0  # units that are one error row (an unreadable file, a bad bin)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    doubtful: dict[str, list[tuple[float, str, np.ndarray]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, item: Prepared) -> None:
        row = item.row
        self.status[row["status"]] += 1
        self.units += item.first
        self.bad_units += row["status"] == "error"
        self.seconds["decode"] += item.decode_s
        self.seconds["segment"] += item.segment_s
        if self.thumbnails and item.array is not None and row["score"] is not None:
            kept = self.doubtful[row["sample_id"]]
            kept.append((row["score"], row["object_id"], item.array))
            if len(kept) > 4 * self.thumbnails:
                kept.sort(key=lambda t: (t[0], t[1]))
                del kept[self.thumbnails :]

    def least_certain(self) -> dict[str, list[tuple[float, str, np.ndarray]]]:
        return {s: sorted(v, key=lambda t: (t[0], t[1]))[: self.thumbnails] for s, v in self.doubtful.items()}

    def counts(self) -> dict[str, Any]:
        out: dict[str, Any] = {"units": self.units, "bad_units": self.bad_units}
        out["objects"] = sum(self.status[s] for s in ("ok", "unknown"))
        out.update({s: self.status[s] for s in ("ok", "unknown", "no_object", "error")})
        return out


def fuse_for_inference(clf: Classifier) -> bool:
    """Fold each eval-mode BatchNorm into the convolution before it (torch.fx): the same features up to float
    rounding (~1e-7), about 1.5× faster forward passes on CPU (bench/classify.py). A backbone fx cannot trace
    stays as it is; False then."""
    from torch.fx.experimental.optimization import fuse

    model = clf.embedder.model
    if getattr(model, "fused_for_inference", False):
        return True
    try:
        model.backbone = fuse(model.backbone.eval())
    except Exception as exc:  # noqa: BLE001 - any tracing failure: keep the eager backbone
        log.info("classify: backbone kept unfused (%s: %s)", type(exc).__name__, exc)
        return False
    setattr(model, "fused_for_inference", True)  # noqa: B010 - a plain attribute on the nn.Module
    return True


def default_workers(requested: int) -> int:
    if requested >= 0:
        return requested
    return max(1, len(os.sched_getaffinity(0)) - 1)


def loader(work: Work, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        ObjectStream(work),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


def classify_batch(clf: Classifier, batch: list[Prepared], device: str, seconds: dict[str, float]) -> None:
    """Embed the batch's objects in one forward pass, search them in one FAISS call, fill their rows."""
    ok = [p for p in batch if p.array is not None]
    if not ok:
        return
    t0 = time.perf_counter()
    embeddings = clf.embedder.embed(np.stack([p.array for p in ok if p.array is not None]), device)
    t1 = time.perf_counter()
    results = clf.classify(embeddings, [p.features for p in ok])
    seconds["embed"] += t1 - t0
    seconds["search"] += time.perf_counter() - t1
    for p, result in zip(ok, results):
        nbs = result["neighbours"]
        p.row.update(
            status=result["status"],
            predicted=result["predicted"],
            score=result["score"],
            best_similarity=result["best_similarity"],
            threshold=clf.threshold,
            ood_score=result.get("ood_score"),
            unknown=result.get("unknown"),
            answer=result.get("answer"),
            neighbour_classes=[n["class"] for n in nbs],
            neighbour_similarities=[n["similarity"] for n in nbs],
            neighbour_keys=[n["crop_key"] for n in nbs],
        )


def write_rows(writer: pq.ParquetWriter, rows: list[dict[str, Any]]) -> None:
    """Append rows (dicts; `box` split into x0..y1) and empty the list."""
    if not rows:
        return
    for r in rows:
        box = r.pop("box", None) or [None] * 4
        r.update(zip(("x0", "y0", "x1", "y1"), box))
    writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
    rows.clear()


def run_stream(
    work: Work,
    clf: Classifier,
    local: Path,
    batch_size: int,
    workers: int,
    device: str,
    tally: Tally,
    on_image: Callable[[dict[str, Any], bytes], None] | None = None,
) -> Tally:
    """Classify every object of the work's units into the Parquet file `local`; returns the tally."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    fuse_for_inference(clf)
    rows: list[dict[str, Any]] = []
    with pq.ParquetWriter(local, SCHEMA, compression="zstd") as writer:
        batches = iter(progress(loader(work, batch_size, workers), desc="classify (batches)"))
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            tally.seconds["wait"] += time.perf_counter() - t0  # the main process idle: the workers are behind
            if batch is None:
                break
            classify_batch(clf, batch, device, tally.seconds)
            t0 = time.perf_counter()
            for item in batch:
                tally.add(item)
                if on_image is not None and item.image is not None:
                    on_image(item.row, item.image)
                rows.append(item.row)
            if len(rows) >= WRITE_EVERY:
                write_rows(writer, rows)
            tally.seconds["write"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        write_rows(writer, rows)
        tally.seconds["write"] += time.perf_counter() - t0
    return tally
