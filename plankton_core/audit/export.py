"""`audit --format ecotaxa --out suspects.zip`: the suspects as an EcoTaxa import archive, for experts to review.

Each suspect is one object: its crop image, status `predicted`, the suggested label as its category, the label it
was given in `object_plankton_given_label`, and the audit's figures beside it. Its object_id is
`ecotaxa.object_id_of(crop_key)`, which `plankton lut --add` uses to find the crop again once the export of the
validated objects comes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from .. import ecotaxa
from ..ecotaxa import CATEGORY, GIVEN_LABEL, STATUS
from ..query.output import write_output
from ..store import Store

PREFIX = "object_plankton_"


def suspect_rows(suspects: pa.Table, k: int) -> tuple[list[str], list[dict[str, Any]], dict[str, str]]:
    """(columns, one row per suspect, type hints) of the archive's TSV."""
    columns = ["img_file_name", "object_id", CATEGORY, STATUS, GIVEN_LABEL]
    columns += [f"{PREFIX}{c}" for c in ("audit_rank", "audit_score", "self_confidence", "normalised_margin", "split")]
    columns += [f"{PREFIX}nn{r}_{f}" for r in range(1, k + 1) for f in ("class", "similarity")]
    hints = {c: "f" for c in columns if c.startswith(PREFIX) and not c.endswith(("_class", "_split"))}
    hints[f"{PREFIX}split"] = "t"
    rows = []
    for s in suspects.to_pylist():
        suffix = s["crop_key"].rsplit(".", 1)[-1].lower() if "." in s["crop_key"] else "png"
        row: dict[str, Any] = {
            "img_file_name": f"images/{s['object_id']}.{suffix}",
            "object_id": s["object_id"],
            CATEGORY: s["suggested_label"],
            STATUS: "predicted",
            GIVEN_LABEL: s["given_label"],
            f"{PREFIX}audit_rank": s["rank"],
            f"{PREFIX}audit_score": round(float(s["score"]), 6),
            f"{PREFIX}self_confidence": round(float(s["self_confidence"]), 6),
            f"{PREFIX}normalised_margin": round(float(s["normalised_margin"]), 6),
            f"{PREFIX}split": s["split"],
        }
        for r, nb in enumerate(s["neighbours"][:k], start=1):
            row[f"{PREFIX}nn{r}_class"] = nb["class"]
            row[f"{PREFIX}nn{r}_similarity"] = round(float(nb["similarity"]), 6)
        rows.append(row)
    return columns, rows, hints


def write_suspects_archive(root: Store, suspects: pa.Table, k: int, out: str, s3_endpoint: str | None) -> str:
    """Write the archive to `out` (a path, file:// or s3:// URI); returns where it went."""
    columns, rows, hints = suspect_rows(suspects, k)
    keys = suspects.column("crop_key").to_pylist()

    def images() -> Iterator[tuple[str, bytes]]:
        for row, key in zip(rows, keys):
            yield row["img_file_name"], root.read_bytes(key)

    data = ecotaxa.archive_bytes("suspects", columns, rows, images(), hints)
    return write_output(data, out, s3_endpoint)
