"""`plankton lut --add URI`: grow and correct the gallery from validated labels, without retraining.

URI is an EcoTaxa export (a .zip or a folder holding ecotaxa_*.tsv, local or s3://) or class folders
(<class>/<image>). Each validated object is matched to the LUT by its object_id (`ecotaxa.object_id_of` of a crop
key: what `audit --format ecotaxa` writes):
- a gallery crop whose validated label differs is relabelled (a held-out val/test crop too: its truth changes);
- a gallery crop marked `dubious` is removed (it should answer for no neighbour);
- an object the LUT does not hold is embedded with the LUT's own checkpoint and added (its image is kept under
  lut/added/), with split `added`.
Everything is decided in the check, before anything is written: classes the LUT has never seen refuse the run
(exit 2, one line naming them) unless --allow-new-classes; objects that match no crop and have no readable image
are error rows (lut/add_rejected/<run id>.parquet) and refuse it too. So the index, the gallery and the embeddings
change together or not at all. Each run appends what it did to lut/changes.parquet (added, relabelled, removed,
by whom where the export says), and rewrites retrieval.json on test. The run's digest holds --add, so every stage
below lut sees the change; a plain `plankton lut` afterwards rebuilds from stats' splits (the additions are then
gone: add them again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import artifacts as A
from .. import ecotaxa
from ..data import preprocess_crop
from ..ecotaxa import PERSON
from ..embedding import check_compatible, load_embedder
from ..errors import BadInputError
from ..imageio import UnreadableImage, decode_image, is_image_key
from ..stage import SUCCESS, StageContext
from ..tables import read_json, read_npy, read_parquet, write_json, write_parquet
from .config import LutConfig
from .index import build_index, load_index, save_index, save_npy

EMBED_BATCH = 256
CHANGES_SCHEMA = pa.schema(
    [
        (name, pa.string())
        for name in (
            "change",
            "object_id",
            "crop_key",
            "old_class",
            "new_class",
            "by",
            "where",
            "run_id",
            "at",
            "source",
        )
    ]
)


@dataclass
class Validated:
    """One validated object of the export."""

    object_id: str
    label: str
    status: str  # validated / dubious
    person: str = ""
    image: str | None = None  # key in the archive, None when it has none
    bad: str | None = None
    crop_key: str = ""  # the matched crop (set by the check)
    old: str = ""  # its class before this run


@dataclass
class AddPlan:
    """What the run will change, decided before anything is written."""

    uri: str
    info: dict[str, Any]
    relabel: dict[int, tuple[str, Validated]] = field(default_factory=dict)  # gallery row -> new class
    relabel_heldout: dict[int, tuple[str, Validated]] = field(default_factory=dict)
    remove: dict[int, Validated] = field(default_factory=dict)
    new: list[tuple[Validated, np.ndarray, bytes]] = field(default_factory=list)  # object, model input, raw image
    new_classes: list[str] = field(default_factory=list)
    skipped: int = 0  # rows not validated (or confirming the label a crop already has)


def read_export(uri: str, s3_endpoint: str | None) -> tuple[Any, list[Validated], int]:
    """(the archive, its validated/dubious objects, rows skipped): EcoTaxa TSVs, else class folders."""
    archive = ecotaxa.open_archive(uri, s3_endpoint)
    if ecotaxa.tsv_keys(archive):
        # read unlabelled (an export of relabelled objects may hold no images: its rows are still good)
        table = ecotaxa.read_objects(archive, None)
        if table.file_errors:
            key, reason = table.file_errors[0]
            raise BadInputError(f"--add {uri}: {key}: {reason}")
        if ecotaxa.CATEGORY not in table.columns:
            raise BadInputError(f"--add {uri}: no {ecotaxa.CATEGORY} column: nothing validated to add")
        rows, skipped = [], 0
        for o in table.objects:
            label = ecotaxa.label_of(o.values, ecotaxa.CATEGORY, 0)
            if o.status not in ("validated", "dubious") or not label or not o.object_id:
                skipped += 1
                continue
            lacks_image = "does not hold" in (o.bad or "")
            rows.append(
                Validated(
                    o.object_id,
                    label,
                    o.status,
                    o.values.get(PERSON, ""),
                    None if lacks_image else o.image,
                    None if lacks_image else o.bad,
                )
            )
        return archive, rows, skipped
    objects = []
    for key in sorted(k for k in archive.list("") if is_image_key(k)):
        parts = PurePosixPath(key).parts
        if len(parts) >= 2:
            objects.append(Validated(PurePosixPath(key).stem, parts[-2], "validated", image=key))
    if not objects:
        raise BadInputError(f"--add {uri}: no ecotaxa_*.tsv and no <class>/<image> files")
    return archive, objects, 0


def check(cfg: LutConfig, ctx: StageContext) -> AddPlan:
    """Read the export and decide every change; refuse new classes (without --allow-new-classes) and objects that
    cannot be matched or read, before anything is touched."""
    root = ctx.root
    if not root.exists(A.LUT_INDEX_JSON) or not root.exists(f"lut/{SUCCESS}"):
        raise BadInputError(f"no finished LUT under {root.uri}/lut: run `plankton lut` before `plankton lut --add`")
    info = read_json(root, A.LUT_INDEX_JSON)
    archive, objects, skipped = read_export(cfg.add, ctx.s3_endpoint)
    plan = AddPlan(cfg.add, info, skipped=skipped)
    gallery = _ids(read_parquet(root, A.LUT_GALLERY["full"], columns=["crop_key", "class"]))
    heldout = (
        _ids(read_parquet(root, A.LUT_HELDOUT, columns=["crop_key", "class"])) if root.exists(A.LUT_HELDOUT) else {}
    )
    size, preprocess = int(info["size"]), str(info.get("preprocess") or "letterbox")
    errors: list[dict[str, str]] = []
    for obj in objects:
        if obj.object_id in gallery:
            _match(plan, obj, gallery[obj.object_id], plan.relabel, removable=True)
        elif obj.object_id in heldout:
            _match(plan, obj, heldout[obj.object_id], plan.relabel_heldout, removable=False)
        elif obj.status == "dubious":
            plan.skipped += 1
        elif obj.image is None or obj.bad:
            errors.append({"object_id": obj.object_id, "reason": obj.bad or "no crop with this object_id, no image"})
        else:
            try:
                raw = archive.read_bytes(obj.image)
                plan.new.append((obj, preprocess_crop(decode_image(raw), size, preprocess), raw))
            except UnreadableImage as exc:
                errors.append({"object_id": obj.object_id, "reason": f"unreadable image {obj.image}: {exc}"})
    _refuse(cfg, ctx, plan, errors)
    return plan


def _ids(table: pa.Table) -> dict[str, tuple[int, str, str]]:
    """object_id -> (row, current class, crop key)."""
    keys, classes = table.column("crop_key").to_pylist(), table.column("class").to_pylist()
    return {ecotaxa.object_id_of(k): (i, c, k) for i, (k, c) in enumerate(zip(keys, classes))}


def _match(plan: AddPlan, obj: Validated, found: tuple[int, str, str], into: dict, removable: bool) -> None:
    row, current, obj.crop_key = found
    obj.old = current
    if obj.status == "dubious":
        if removable:
            plan.remove[row] = obj
        else:
            plan.skipped += 1
    elif obj.label != current:
        into[row] = (obj.label, obj)
    else:
        plan.skipped += 1


def _refuse(cfg: LutConfig, ctx: StageContext, plan: AddPlan, errors: list[dict[str, str]]) -> None:
    """Exit 2 (nothing changed) on error rows, or on new classes without --allow-new-classes."""
    known = set(plan.info["classes"])
    used = [lbl for lbl, _ in [*plan.relabel.values(), *plan.relabel_heldout.values()]] + [
        o.label for o, *_ in plan.new
    ]
    plan.new_classes = sorted(set(used) - known)
    if errors:
        key = f"lut/add_rejected/{ctx.run_id}.parquet"
        write_parquet(ctx.root, key, pa.Table.from_pylist(errors))
        first = errors[0]
        raise BadInputError(
            f"--add {plan.uri}: {len(errors)} object(s) match no crop and cannot be added "
            f"(first: {first['object_id']}: {first['reason']}); nothing changed; rows in {ctx.root.uri}/{key}"
        )
    if plan.new_classes and not cfg.allow_new_classes:
        raise BadInputError(
            f"--add {plan.uri} names class(es) the LUT has never seen: {', '.join(plan.new_classes)}; "
            "nothing changed; add them with --allow-new-classes"
        )


def _retire_answer(ctx: StageContext, info: dict[str, Any]) -> None:
    """The answer val chose (lut/answer.json) was fitted for the gallery and classes before this addition (its
    features index holds the old rows, its head the old classes): query and classify go back to the plain LUT,
    which the addition keeps current, until `plankton lut --force` chooses again."""
    answer = info.get("answer")
    if not answer or answer.get("name") == "lut":
        return
    info["answer"], info["answer_before_add"] = None, answer
    if ctx.root.exists(A.LUT_INDEX_FEATURES):
        ctx.root.delete(A.LUT_INDEX_FEATURES)
    ctx.notes.append(
        f"the answer val chose ({answer['name']}) was made for the gallery before this addition: query and classify "
        "answer with the plain LUT until `plankton lut --force` chooses again"
    )


def body(cfg: LutConfig, ctx: StageContext) -> dict[str, Any]:
    """Apply the plan: embed the new objects, then write the gallery, embeddings, index(es), changes and figures."""
    plan: AddPlan = ctx.plan
    root, info = ctx.root, plan.info
    t0 = time.perf_counter()
    new_x = _embed_new(root, info, plan)
    classes = list(info["classes"]) + plan.new_classes
    gallery = read_parquet(root, A.LUT_GALLERY["full"])
    x = read_npy(root, A.LUT_EMBEDDINGS)
    index = load_index(root, A.LUT_INDEX["full"])
    before_test = _test_set(root, gallery)
    before = _top1(index, gallery, len(classes))(before_test) if before_test is not None else None
    kept = np.setdiff1d(np.arange(gallery.num_rows), np.fromiter(plan.remove, np.int64, len(plan.remove)))
    new_keys = [f"{A.LUT_ADDED}/{o.object_id}{PurePosixPath(o.image or '.png').suffix.lower()}" for o, *_ in plan.new]
    gallery = _apply_gallery(gallery, plan, classes, kept, new_keys)
    x = np.concatenate([x[kept], new_x]).astype(np.float32)
    index = _apply_index(cfg, index, info, x, new_x, removed=bool(plan.remove))
    for key, (_, _, raw) in zip(new_keys, plan.new):
        root.write_bytes(key, raw)
    write_parquet(root, A.LUT_GALLERY["full"], gallery)
    save_npy(root, A.LUT_EMBEDDINGS, x)
    save_index(root, A.LUT_INDEX["full"], index)
    if info.get("pruned") and root.exists(A.LUT_GALLERY["pruned"]):
        info["pruned"]["count"] = _apply_pruned(root, info, gallery, x, kept, len(new_x))
    if plan.relabel_heldout:
        _relabel_heldout(root, plan, classes)
    changes = _changes(ctx, plan, gallery, new_keys)
    _retire_answer(ctx, info)
    info.update(classes=classes, count=int(index.ntotal), added_at=datetime.now(timezone.utc).isoformat())
    write_json(root, A.LUT_INDEX_JSON, info)
    counts: dict[str, Any] = {"added": len(plan.new), "relabelled": len(plan.relabel) + len(plan.relabel_heldout)}
    counts.update(removed=len(plan.remove), gallery=int(index.ntotal), changes=changes, new_classes=plan.new_classes)
    counts["add_seconds"] = round(time.perf_counter() - t0, 3)
    counts.update(_retrieval(cfg, ctx, index, gallery, classes))
    if before is not None:
        counts.update(_record_effect(cfg, root, index, gallery, classes, before))
    ctx.notes.append(
        f"--add {plan.uri}: {counts['added']} added, {counts['relabelled']} relabelled, {counts['removed']} removed "
        f"→ {root.uri}/{A.LUT_CHANGES}"
    )
    return counts


def _record_effect(
    cfg: LutConfig, root: Any, index: faiss.Index, gallery: pa.Table, classes: list[str], before: np.ndarray
) -> dict[str, Any]:
    """retrieval.json's `add_effect`: test top-1 before vs after, against the test labels as they are now."""
    after_test = _test_set(root, gallery)
    if after_test is None:
        return {}
    after = _top1(index, gallery, len(classes))(after_test)
    effect = add_effect(after_test[0].labels, before, after, len(classes), cfg.bootstrap, cfg.seed)
    write_json(root, A.LUT_RETRIEVAL, {**read_json(root, A.LUT_RETRIEVAL), "add_effect": effect})
    change = [round(effect["difference"], 6), [round(v, 6) for v in effect["difference_ci"]]]
    return {"test_top1_accuracy_change": change}


def _embed_new(root: Any, info: dict[str, Any], plan: AddPlan) -> np.ndarray:
    """The new objects' embeddings, with the checkpoint the LUT was built with (refused if it changed)."""
    if not plan.new:
        return np.zeros((0, int(info["dimension"])), np.float32)
    embedder = load_embedder(root, info["checkpoint"])
    check_compatible(info, embedder, f"{root.uri}/{A.LUT_INDEX_JSON}")
    batch = np.stack([arr for _, arr, _ in plan.new])
    return np.concatenate([embedder.embed(batch[i : i + EMBED_BATCH]) for i in range(0, len(batch), EMBED_BATCH)])


def _apply_gallery(gallery: pa.Table, plan: AddPlan, classes: list[str], kept: np.ndarray, keys: list[str]) -> pa.Table:
    """The gallery relabelled, without the removed rows, with the new rows; ids renumbered to row order."""
    cls = gallery.column("class").to_pylist()
    for row, (label, _) in plan.relabel.items():
        cls[row] = label
    label_of = {c: i for i, c in enumerate(classes)}
    gallery = gallery.set_column(gallery.column_names.index("class"), "class", pa.array(cls, pa.string()))
    labels = pa.array([label_of[c] for c in cls], pa.int64())
    gallery = gallery.set_column(gallery.column_names.index("label"), "label", labels).take(pa.array(kept))
    added = {
        "crop_key": keys,
        "class": [o.label for o, *_ in plan.new],
        "label": [label_of[o.label] for o, *_ in plan.new],
        "split": ["added"] * len(keys),
        "source_key": keys,
    }
    extra = pa.table(
        {n: pa.array(added.get(n, [None] * len(keys)), gallery.schema.field(n).type) for n in gallery.column_names}
    )
    out = pa.concat_tables([gallery, extra])
    return out.set_column(0, "id", pa.array(np.arange(out.num_rows, dtype=np.int64)))


def _apply_index(
    cfg: LutConfig, index: faiss.Index, info: dict[str, Any], x: np.ndarray, new_x: np.ndarray, removed: bool
) -> faiss.Index:
    """New vectors appended (ids continue); with removals, the index refilled from the kept rows (a flat or IVF
    index keeps its training; HNSW is rebuilt)."""
    if not removed:
        if len(new_x):
            index.add(np.ascontiguousarray(new_x, dtype=np.float32))
        return index
    if info.get("index_type") == "hnsw":
        return build_index(x, "hnsw", hnsw_m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction)
    index.reset()
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    return index


def _apply_pruned(
    root: Any, info: dict[str, Any], gallery: pa.Table, x: np.ndarray, kept: np.ndarray, n_new: int
) -> int:
    """The pruned gallery and index follow: relabels through full_id, removed rows out, new rows in (unpruned)."""
    pruned = read_parquet(root, A.LUT_GALLERY["pruned"])
    new_id = np.full(int(max(kept.max(initial=-1), pc.max(pruned.column("full_id")).as_py() or 0)) + 1, -1, np.int64)
    new_id[kept] = np.arange(len(kept))
    full = new_id[np.asarray(pruned.column("full_id").to_pylist(), np.int64)]
    full = np.concatenate([full[full >= 0], np.arange(len(kept), len(kept) + n_new)])
    rows = gallery.take(pa.array(full)).rename_columns(["full_id" if n == "id" else n for n in gallery.column_names])
    rows = rows.add_column(0, "id", pa.array(np.arange(len(full), dtype=np.int64)))
    index = load_index(root, A.LUT_INDEX["pruned"])
    if info.get("index_type") == "hnsw" or len(full) - n_new != index.ntotal:
        index = build_index(x[full], "flat") if info.get("index_type") != "hnsw" else build_index(x[full], "hnsw")
    elif n_new:
        index.add(np.ascontiguousarray(x[full[-n_new:]], dtype=np.float32))
    save_index(root, A.LUT_INDEX["pruned"], index)
    write_parquet(root, A.LUT_GALLERY["pruned"], rows.select(["id", *[n for n in rows.column_names if n != "id"]]))
    return int(index.ntotal)


def _relabel_heldout(root: Any, plan: AddPlan, classes: list[str]) -> None:
    held = read_parquet(root, A.LUT_HELDOUT)
    cls = held.column("class").to_pylist()
    for row, (label, _) in plan.relabel_heldout.items():
        cls[row] = label
    label_of = {c: i for i, c in enumerate(classes)}
    held = held.set_column(held.column_names.index("class"), "class", pa.array(cls, pa.string()))
    held = held.set_column(held.column_names.index("label"), "label", pa.array([label_of[c] for c in cls], pa.int64()))
    write_parquet(root, A.LUT_HELDOUT, held)


def _changes(ctx: StageContext, plan: AddPlan, gallery: pa.Table, new_keys: list[str]) -> int:
    """Append this run's rows to lut/changes.parquet; returns how many."""
    root = ctx.root
    at = datetime.now(timezone.utc).isoformat()
    rows = [_change("relabelled", obj, obj.crop_key, label) for label, obj in plan.relabel.values()]
    rows += [_change("relabelled", obj, obj.crop_key, label, "heldout") for label, obj in plan.relabel_heldout.values()]
    rows += [_change("removed", obj, obj.crop_key, None) for obj in plan.remove.values()]
    rows += [_change("added", obj, key, obj.label) for key, (obj, *_) in zip(new_keys, plan.new)]
    rows = [{**r, "run_id": ctx.run_id, "at": at, "source": plan.uri} for r in rows]
    table = pa.Table.from_pylist(rows, schema=CHANGES_SCHEMA)
    if root.exists(A.LUT_CHANGES) and table.num_rows:
        table = pa.concat_tables([read_parquet(root, A.LUT_CHANGES).cast(CHANGES_SCHEMA), table])
    if table.num_rows:
        write_parquet(root, A.LUT_CHANGES, table)
    return len(rows)


def _change(kind: str, obj: Validated, key: str, label: str | None, where: str = "gallery") -> dict[str, Any]:
    return {
        "change": kind,
        "object_id": obj.object_id,
        "crop_key": key,
        "old_class": obj.old or None,
        "new_class": label,
        "by": obj.person or None,
        "where": where,
    }


def _test_set(root: Any, gallery: pa.Table) -> tuple[Any, np.ndarray] | None:
    """The test crops as queries (own source image left out) and the gallery's source codes; None without test."""
    from .evaluation import QuerySet
    from .retrieval import source_keys

    if not root.exists(A.LUT_HELDOUT):
        return None
    held = read_parquet(root, A.LUT_HELDOUT)
    test = np.asarray(held.column("split").to_pylist(), dtype=object) == "test"
    if not test.any():
        return None
    held = held.filter(pa.array(test))
    hx = read_npy(root, A.LUT_HELDOUT_EMBEDDINGS)[test]
    both = pa.concat_arrays([source_keys(gallery), source_keys(held)])
    groups = np.asarray(pc.dictionary_encode(both).indices.to_numpy(zero_copy_only=False), np.int64)
    labels = np.asarray(held.column("label").to_pylist(), np.int64)
    return QuerySet("test", hx, labels, groups[gallery.num_rows :]), groups[: gallery.num_rows]


def _top1(index: faiss.Index, gallery: pa.Table, n_classes: int) -> Any:
    """A function of the test set: the nearest neighbour's class for each test crop under this gallery."""
    from .evaluation import predict_index

    g_labels = np.asarray(gallery.column("label").to_pylist(), np.int64)

    def predict(test: tuple[Any, np.ndarray]) -> np.ndarray:
        return predict_index(index, test[0], g_labels, test[1], n_classes, 1)["top1"].pred

    return predict


def _retrieval(cfg: LutConfig, ctx: StageContext, index: faiss.Index, gallery: pa.Table, classes: list[str]) -> dict:
    """retrieval.json again: the changed full index on test (the pruning record of the build is carried over)."""
    from .stage import _evaluate_test

    root = ctx.root
    test = _test_set(root, gallery)
    if test is None:
        return {}
    g_labels = np.asarray(gallery.column("label").to_pylist(), np.int64)
    retrieval = _evaluate_test(cfg, ctx, test[0], index, None, g_labels, test[1], classes, gallery.num_rows)
    if root.exists(A.LUT_RETRIEVAL):
        before = read_json(root, A.LUT_RETRIEVAL)
        retrieval.update({k: before[k] for k in ("prune", "prune_effect") if k in before})
    write_json(root, A.LUT_RETRIEVAL, retrieval)
    return {"test_top1_accuracy": round(retrieval["rows"][0]["metrics"]["accuracy"], 6)} if retrieval["rows"] else {}


def add_effect(y: np.ndarray, before: np.ndarray, after: np.ndarray, n_classes: int, draws: int, seed: int) -> dict:
    """Test top-1 accuracy before and after the addition, each with its Wilson interval, and the paired difference
    with its stratified bootstrap 95% interval."""
    from ..scoring import wilson_interval
    from .selection import bootstrap_metric, percentile_interval

    n = len(y)
    acc_before, acc_after = float((before == y).mean()), float((after == y).mean())
    values = bootstrap_metric(y, [before, after], n_classes, "accuracy", draws, seed)
    return {
        "split": "test",
        "count": int(n),
        "before": acc_before,
        "before_ci": list(wilson_interval(int((before == y).sum()), n)),
        "after": acc_after,
        "after_ci": list(wilson_interval(int((after == y).sum()), n)),
        "difference": acc_after - acc_before,
        "difference_ci": list(percentile_interval(values[1] - values[0])),
        "interval": "Wilson; difference: paired stratified bootstrap percentile",
    }
