"""Boxes and labels to learn from, by `--annotations`, as frames with targets; and their train/val/test split.

- synth: `<input>/ground_truth.parquet` of `plankton synth` (every object, border-cut ones too);
- coco: a COCO JSON the user gives (`images[].file_name` relative to `--input`); each problem is one
  BadInputError line naming it: empty file, missing image, box outside its image, unknown category;
- manifest: the crop stage's kept boxes with the frame's class as every box's label (pseudo labels:
  a user with only class folders can still train one). Objects crop dropped (border-cut, tiny)
  are unlabelled there, i.e. background to the detector.

Boxes are (x0, y0, x1, y1) floats, ends exclusive; labels are 1…K (0 is background), K = len(classes).
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from ..artifacts import CROP_MANIFEST, STATS_SPLITS
from ..detection import xywh_to_xyxy
from ..errors import BadInputError
from ..splitting import SPLITS, assign_splits
from ..store import Store
from ..tables import read_parquet

GROUND_TRUTH = "ground_truth.parquet"
NO_OBJECT_CLASS = "(no object)"
BOX_TOLERANCE = 1.0  # pixels a COCO box may reach past its image (rounding in other tools)


@dataclass
class Frame:
    key: str  # under the input store
    boxes: np.ndarray  # (n, 4) float64 xyxy
    labels: np.ndarray  # (n,) int64 in 1…K
    crowd: np.ndarray | None = None  # (n,) bool: COCO iscrowd (kept for evaluation, not trained on)
    width: int = 0  # 0 = not known before decoding
    height: int = 0
    image_id: int = 0  # COCO image id (1… in frame order unless the COCO file gives them)
    split: str = "train"

    def __post_init__(self) -> None:
        if self.crowd is None:
            self.crowd = np.zeros(len(self.labels), dtype=bool)

    def main_class(self, classes: Sequence[str]) -> str:
        """The frame's class for the stratified split: its most common label (ties: the first class)."""
        if len(self.labels) == 0:
            return NO_OBJECT_CLASS
        counts = Counter(int(x) for x in self.labels)
        best = max(sorted(counts), key=lambda k: counts[k])
        return classes[best - 1]


@dataclass
class Annotations:
    classes: list[str]
    frames: list[Frame]
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Frame]:
        return [f for f in self.frames if f.split == name]

    def boxes(self) -> int:
        return int(sum(len(f.labels) for f in self.frames))


def load_synth(images: Store) -> Annotations:
    """Frames and boxes of `plankton synth`'s ground_truth.parquet under `images`."""
    if not images.exists(GROUND_TRUTH):
        raise BadInputError(f"--annotations synth: no {images.uri}/{GROUND_TRUTH} (made by `plankton synth --out`)")
    table = read_parquet(images, GROUND_TRUTH)
    need = ("image_key", "class", "x0", "y0", "x1", "y1")
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise BadInputError(f"{images.uri}/{GROUND_TRUTH} lacks column(s) {', '.join(missing)}")
    cols = {c: table.column(c).to_pylist() for c in need}
    return _from_rows(
        cols["image_key"],
        cols["class"],
        np.array([cols[c] for c in ("x0", "y0", "x1", "y1")], dtype=np.float64).T.reshape(-1, 4),
    )


def load_manifest(root: Store) -> Annotations:
    """The crop stage's kept boxes, each labelled with its frame's class (source_key relative to crop's --input)."""
    table = read_parquet(root, CROP_MANIFEST)
    need = ("source_key", "class", "status", "x0", "y0", "x1", "y1")
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise BadInputError(
            f"{root.uri}/{CROP_MANIFEST} lacks column(s) {', '.join(missing)}; rerun `plankton crop --force`"
        )
    kept = table.filter(pc.equal(table.column("status"), "kept"))
    if kept.num_rows == 0:
        raise BadInputError(f"no kept boxes in {root.uri}/{CROP_MANIFEST}: nothing to train a detector on")
    boxes = np.array([kept.column(c).to_pylist() for c in ("x0", "y0", "x1", "y1")], dtype=np.float64).T.reshape(-1, 4)
    ann = _from_rows(kept.column("source_key").to_pylist(), kept.column("class").to_pylist(), boxes)
    if "width" in kept.column_names and "height" in kept.column_names:
        size = {
            k: (w, h)
            for k, w, h in zip(
                kept.column("source_key").to_pylist(),
                kept.column("width").to_pylist(),
                kept.column("height").to_pylist(),
            )
        }
        for f in ann.frames:
            w, h = size.get(f.key, (None, None))
            f.width, f.height = int(w or 0), int(h or 0)
    ann.notes.append(
        "manifest pseudo labels: objects crop dropped (border-cut, too small) are unlabelled, i.e. background"
    )
    return ann


def _from_rows(keys: Sequence[str], classes: Sequence[str], boxes: np.ndarray) -> Annotations:
    names = sorted({str(c) for c in classes})
    label = {n: i + 1 for i, n in enumerate(names)}
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(str(k), []).append(i)
    frames = []
    for n, key in enumerate(sorted(by_key)):
        rows = by_key[key]
        frames.append(
            Frame(
                key,
                boxes[rows].copy(),
                np.array([label[str(classes[r])] for r in rows], dtype=np.int64),
                image_id=n + 1,
            )
        )
    return Annotations(names, frames)


def load_coco(data: bytes, what: str, image_keys: set[str]) -> Annotations:
    """A COCO detection file: every problem is one line naming it. `image_keys`: the files under --input."""
    doc = _coco_document(data, what)
    cats: dict[int, str] = {}
    for c in doc["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise BadInputError(f"COCO file {what}: a category lacks id or name: {c!r}")
        cats[int(c["id"])] = str(c["name"])
    names = [cats[i] for i in sorted(cats)]
    label = {cid: n + 1 for n, cid in enumerate(sorted(cats))}
    images = _coco_images(doc["images"], what, image_keys)
    per_image: dict[int, list[tuple[list[float], int, bool]]] = {i: [] for i in images}
    for ann in doc["annotations"]:
        image_id, box = _coco_box(ann, what, images, cats)
        per_image[image_id].append((box, label[int(ann["category_id"])], bool(ann.get("iscrowd", 0))))
    frames = []
    for image_id in sorted(images):
        f = images[image_id]
        rows = per_image[image_id]
        if rows:
            f.boxes = xywh_to_xyxy(np.array([r[0] for r in rows]))
            f.boxes[:, [0, 2]] = f.boxes[:, [0, 2]].clip(0, f.width)
            f.boxes[:, [1, 3]] = f.boxes[:, [1, 3]].clip(0, f.height)
            f.labels = np.array([r[1] for r in rows], dtype=np.int64)
            f.crowd = np.array([r[2] for r in rows], dtype=bool)
        else:
            f.crowd = np.zeros(0, dtype=bool)
        frames.append(f)
    return Annotations(names, frames)


def _coco_document(data: bytes, what: str) -> dict[str, Any]:
    """The parsed file, with its images, annotations and categories lists present and not empty."""
    if not data.strip():
        raise BadInputError(f"COCO file {what} is empty")
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"COCO file {what} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise BadInputError(f"COCO file {what} is empty (no images, annotations or categories)")
    for name in ("images", "annotations", "categories"):
        if not isinstance(doc.get(name), list):
            raise BadInputError(f"COCO file {what} lacks its {name!r} list")
    if not doc["images"]:
        raise BadInputError(f"COCO file {what} lists no images")
    if not doc["categories"]:
        raise BadInputError(f"COCO file {what} lists no categories")
    return doc


def _coco_images(entries: list[Any], what: str, image_keys: set[str]) -> dict[int, Frame]:
    """Each listed image as a Frame without boxes yet, by its COCO id; each must be a file under --input."""
    images: dict[int, Frame] = {}
    for img in entries:
        if not isinstance(img, dict) or not all(k in img for k in ("id", "file_name", "width", "height")):
            raise BadInputError(f"COCO file {what}: an image lacks id, file_name, width or height: {img!r}")
        key = posixpath.normpath(str(img["file_name"]).lstrip("/"))
        if key not in image_keys:
            raise BadInputError(
                f"COCO file {what}: image {img['file_name']!r} (id {img['id']}) is missing from --input"
            )
        images[int(img["id"])] = Frame(
            key,
            np.zeros((0, 4)),
            np.zeros(0, dtype=np.int64),
            width=int(img["width"]),
            height=int(img["height"]),
            image_id=int(img["id"]),
        )
    return images


def _coco_box(ann: Any, what: str, images: dict[int, Frame], cats: dict[int, str]) -> tuple[int, list[float]]:
    """(image id, [x, y, w, h]) of one annotation, checked against its image and the categories."""
    if not isinstance(ann, dict) or not all(k in ann for k in ("image_id", "category_id", "bbox")):
        raise BadInputError(f"COCO file {what}: an annotation lacks image_id, category_id or bbox: {ann!r}")
    aid = ann.get("id", "?")
    if int(ann["image_id"]) not in images:
        raise BadInputError(
            f"COCO file {what}: annotation {aid} refers to image id {ann['image_id']}, which the file does not list"
        )
    frame = images[int(ann["image_id"])]
    if int(ann["category_id"]) not in cats:
        raise BadInputError(
            f"COCO file {what}: annotation {aid} of image {frame.key!r} has unknown category {ann['category_id']} "
            f"(categories: {', '.join(str(k) for k in sorted(cats))})"
        )
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise BadInputError(
            f"COCO file {what}: annotation {aid} of image {frame.key!r} has a bbox "
            f"that is not [x, y, width, height]: {bbox!r}"
        )
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise BadInputError(
            f"COCO file {what}: annotation {aid} of image {frame.key!r} has an empty box {bbox} "
            "(width and height must be > 0)"
        )
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > frame.width + t or y + h > frame.height + t:
        raise BadInputError(
            f"COCO file {what}: annotation {aid} box {bbox} lies outside image {frame.key!r} "
            f"({frame.width}×{frame.height})"
        )
    return int(ann["image_id"]), [x, y, w, h]


def assign_frame_splits(ann: Annotations, fractions: Sequence[float], seed: int, root: Store | None = None) -> None:
    """Each frame's split: the stats split of its crops where stats has one (the backbone never saw val/test
    frames), otherwise stats' grouped, class-stratified rule (`splitting.assign_splits`) over frames."""
    known: dict[str, str] = {}
    if root is not None and root.exists(STATS_SPLITS):
        table = read_parquet(root, STATS_SPLITS)
        if "source_key" in table.column_names and "split" in table.column_names:
            known = dict(
                zip(
                    (str(k) for k in table.column("source_key").to_pylist()),
                    (str(s) for s in table.column("split").to_pylist()),
                )
            )
    held = [f for f in ann.frames if known.get(f.key) == "unseen"]  # stats --unseen-classes: out of every split
    if held:
        ann.frames = [f for f in ann.frames if known.get(f.key) != "unseen"]
        ann.notes.append(f"{len(held)} frame(s) of stats' unseen classes (--unseen-classes) left out of every split")
    rest = [f for f in ann.frames if f.key not in known]
    for f in ann.frames:
        if f.key in known:
            f.split = known[f.key]
    if known and len(rest) < len(ann.frames):
        ann.notes.append(
            f"{len(ann.frames) - len(rest)} frame(s) keep the split stats gave their crops; {len(rest)} split anew"
        )
    if rest:
        assignment = assign_splits([f.main_class(ann.classes) for f in rest], [f.key for f in rest], fractions, seed)
        for f, s in zip(rest, assignment.names()):
            f.split = str(s)
        if assignment.unsplit_classes:
            ann.notes.append(
                "classes with too few frames to split, kept whole in train: "
                f"{', '.join(sorted(assignment.unsplit_classes))}"
            )
    assert all(f.split in SPLITS for f in ann.frames)
