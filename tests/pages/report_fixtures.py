"""A store holding what evaluate and a finished lut leave, with real crop images, for the pictures in the report."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from plankton_core.imageio import encode_png
from plankton_core.pages.plots import confusion_png, worst_confusions
from plankton_core.scoring import classification_metrics, confusion_matrix, metric_intervals, per_class_table
from plankton_core.store import LocalStore
from plankton_core.tables import write_json, write_npy, write_parquet

CLASSES = ["copepod", "diatom <chain>", "detritus"]


def crop_png(rng: np.random.Generator, label: int, side: int) -> bytes:
    img = np.zeros((side, side + 7 * label, 3), np.uint8)
    img[..., label] = 200
    img += rng.integers(0, 50, img.shape, dtype=np.uint8)
    return encode_png(img)


def evaluated_store(
    path, n_test: int = 30, n_gallery: int = 40, with_lut: bool = True, side: int = 120, seed: int = 0
) -> LocalStore:
    """evaluate's outputs for `n_test` test crops (some wrong) and, optionally, a finished lut over `n_gallery`
    crops."""
    rng = np.random.default_rng(seed)
    store = LocalStore(path)
    y = np.arange(n_test) % 3
    pred = np.where(rng.random(n_test) < 0.6, y, (y + 1 + rng.integers(0, 2, n_test)) % 3)
    scores = rng.dirichlet(np.ones(3), n_test)
    keys = [f"crop/crops/{CLASSES[c].split()[0]}/t{i:03d}.png" for i, c in enumerate(y)]
    for k, c in zip(keys, y):
        store.write_bytes(k, crop_png(rng, int(c), side))
    cls = np.asarray(CLASSES, dtype=object)
    write_parquet(
        store,
        "evaluate/predictions.parquet",
        pa.table(
            {
                "crop_key": keys,
                "label": y,
                "pred": pred,
                "score": scores.max(1),
                "class": cls[y].tolist(),
                "pred_class": cls[pred].tolist(),
            }
        ),
    )
    metrics = classification_metrics(y, pred, 3, scores=scores)
    iv = metric_intervals(y, pred, 3, scores, reps=100, seed=0)
    metrics.update(
        intervals=iv["overall"],
        bootstrap=iv["bootstrap"],
        classes_not_in_test=[{"class": "rare", "crops": 4, "source_images": 2, "train": 4, "val": 0}],
    )
    metrics.update(model="test_resnet", checkpoint="epoch_0004", backbone_epoch=4, head_epoch=7, backbone_batch_size=32)
    write_json(store, "evaluate/metrics.json", metrics)
    cm = confusion_matrix(y, pred, 3)
    table = per_class_table(cm)
    columns = {"label": [0, 1, 2], "class": CLASSES, "support": table["support"], "predicted": cm.sum(0)}
    for name in ("precision", "recall", "f1"):
        columns[name] = table[name]
        columns[f"{name}_low"] = [lo for lo, _ in iv["per_class"][name]]
        columns[f"{name}_high"] = [hi for _, hi in iv["per_class"][name]]
    write_parquet(store, "evaluate/per_class.parquet", pa.table(columns))
    write_parquet(store, "evaluate/confusions.parquet", pa.Table.from_pylist(worst_confusions(cm, CLASSES)))
    store.write_bytes("evaluate/confusion.png", confusion_png(cm, CLASSES))
    if with_lut:
        g_y = np.arange(n_gallery) % 3
        g_keys = [f"crop/crops/gallery/g{i:03d}.png" for i in range(n_gallery)]
        for k, c in zip(g_keys, g_y):
            store.write_bytes(k, crop_png(rng, int(c), side))
        emb = rng.normal(size=(n_gallery, 8)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        held = rng.normal(size=(n_test, 8)).astype(np.float32)
        held /= np.linalg.norm(held, axis=1, keepdims=True)
        write_parquet(
            store,
            "lut/gallery.parquet",
            pa.table({"id": np.arange(n_gallery), "crop_key": g_keys, "class": cls[g_y].tolist(), "label": g_y}),
        )
        write_npy(store, "lut/embeddings.npy", emb)
        write_parquet(
            store,
            "lut/heldout.parquet",
            pa.table({"crop_key": keys, "class": cls[y].tolist(), "label": y, "split": ["test"] * n_test}),
        )
        write_npy(store, "lut/heldout.npy", held)
        write_json(store, "lut/retrieval.json", {"rows": []})
        write_json(store, "lut/run.json", {"stage": "lut", "digest": "d1"})
        store.write_bytes("lut/_SUCCESS", b"")
    return store
