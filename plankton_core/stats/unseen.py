"""`stats --unseen-classes`: whole classes held out of every split, the near-OOD set of the open-set evaluation.

Their crops are kept out of train, val, test, the gallery and every selection;
they are written in stats/splits.parquet with split `unseen` and label -1, and
stats/classes.json lists only the known classes. N classes are drawn (seeded)
among those with at least --unseen-min-images crops, or named.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import STATS_SPLITS
from ..errors import BadInputError
from ..store import Store
from ..tables import read_parquet, write_parquet

UNSEEN = "unseen"


def choose_unseen(spec: tuple[str, ...], classes: np.ndarray, seed: int, min_images: int) -> list[str]:
    """The held-out class names: `spec` is a count (drawn among classes with ≥ min_images crops) or names."""
    names, counts = np.unique(np.asarray(classes, dtype=object).astype(str), return_counts=True)
    present = [str(n) for n in names]
    if not spec or spec == ("0",):
        return []
    if len(spec) == 1 and spec[0].isdigit() and spec[0] not in present:
        n = int(spec[0])
        eligible = [str(c) for c, k in zip(names, counts) if k >= min_images]
        if n > len(eligible):
            raise BadInputError(
                f"--unseen-classes {n}: only {len(eligible)} class(es) have at least {min_images} images "
                f"(--unseen-min-images)"
            )
        chosen = np.random.default_rng(seed).choice(len(eligible), size=n, replace=False)
        picked = sorted(eligible[i] for i in chosen)
    else:
        missing = [s for s in spec if s not in present]
        if missing:
            shown = ", ".join(present[:20]) + (" …" if len(present) > 20 else "")
            raise BadInputError(f"--unseen-classes: no class named {', '.join(missing)} (classes: {shown})")
        picked = sorted(set(spec))
    if len(present) - len(picked) < 2:
        raise BadInputError(
            f"--unseen-classes leaves {len(present) - len(picked)} known class(es) of {len(present)}; "
            "at least two must remain"
        )
    return picked


def hold_out(kept: pa.Table, unseen: list[str]) -> tuple[pa.Table, pa.Table]:
    """(rows of known classes, rows of the unseen classes) of the kept crops."""
    mask = pc.is_in(kept.column("class"), value_set=pa.array(unseen, pa.string()))
    return kept.filter(pc.invert(mask)), kept.filter(mask)


def append_unseen(root: Store, unseen: pa.Table, group_column: str) -> None:
    """Add the unseen rows to stats/splits.parquet (split `unseen`, label -1), keeping it sorted by crop_key."""
    if unseen.num_rows == 0:
        return
    splits = read_parquet(root, STATS_SPLITS)
    group = unseen.column(group_column if group_column in unseen.column_names else "source_key")
    rows = pa.table(
        {
            "crop_key": unseen.column("crop_key"),
            "class": unseen.column("class"),
            "label": pa.array(np.full(unseen.num_rows, -1, np.int64)),
            "split": pa.array([UNSEEN] * unseen.num_rows, pa.string()),
            "source_key": unseen.column("source_key"),
            "group": group.cast(pa.string()),
        }
    )
    rows = rows.select([c for c in splits.column_names if c in rows.column_names])
    for name in splits.column_names:  # columns another option added: null for unseen rows
        if name not in rows.column_names:
            rows = rows.append_column(name, pa.nulls(rows.num_rows, splits.schema.field(name).type))
    combined = pa.concat_tables([splits, rows.cast(splits.schema)]).sort_by("crop_key")
    write_parquet(root, STATS_SPLITS, combined)


def describe(unseen: pa.Table, names: list[str]) -> dict:
    """stats.json's record of the held-out classes."""
    counts = pc.value_counts(unseen.column("class")).to_pylist() if unseen.num_rows else []
    return {"classes": names, "crops": int(unseen.num_rows), "by_class": {c["values"]: c["counts"] for c in counts}}
