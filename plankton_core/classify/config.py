"""The classify stage's options, each declared once (type, default, bounds, help)."""

from __future__ import annotations

import re
from typing import Literal

from ..config import Fingerprint, fingerprint_option, option, stage_config
from ..errors import BadInputError
from ..query.config import ANSWER_HELP, UNKNOWN_RECALL_HELP, UNKNOWN_SCORE_HELP, Answer, UnknownScore, Vote

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@stage_config
class ClassifyConfig:
    """How new samples are read, classified against the LUT, and written under classify/<NAME>/."""

    input: str = option(
        "",
        "A folder of images, an EcoTaxa export (.zip or folder of ecotaxa_*.tsv) or a folder of IFCB bins "
        "(.hdr/.adc/.roi): a path, file:// or s3://.",
        metavar="URI",
    )
    name: str = option("", "This batch's name: outputs go to classify/<NAME>/.", metavar="NAME")
    fingerprint: Fingerprint = fingerprint_option("the --input files", "names, sizes and mtimes or S3 ETags")
    objects: Literal["auto", "frames", "single"] = option(
        "auto",
        "Image folders: frames (every whole object of each image), single (each image one object) or auto "
        "(what the crop stage recorded); EcoTaxa and IFCB objects are single.",
    )
    k: int = option(5, "Neighbours to keep (and to vote with).", ge=1, le=100)
    vote: Vote = option("top1", "top1: the nearest neighbour's class; weighted: similarity-weighted vote of the k.")
    answer: Answer = option("auto", ANSWER_HELP)
    reject_below: float | None = option(
        None, "Answer 'unknown' below this best similarity [the calibrated threshold, if any].", metavar="FLOAT"
    )
    unknown_score: UnknownScore | None = option(None, UNKNOWN_SCORE_HELP, metavar="SCORE")
    unknown_recall: float | None = option(None, UNKNOWN_RECALL_HELP, gt=0.0, le=1.0, metavar="FLOAT")
    pruned: bool = option(False, "Search the pruned index instead of the full one.")
    checkpoint: str = option("", "Checkpoint key to embed with [sweep/selection.json's].", metavar="KEY")
    format: Literal["parquet", "ecotaxa"] = option(
        "parquet", "parquet: the tables; ecotaxa: also ecotaxa/<sample>.zip, an EcoTaxa import archive per sample."
    )
    volume_column: str = option(
        "", "EcoTaxa input: the column holding each sample's analysed volume (for concentrations).", metavar="NAME"
    )
    volume_scale: float = option(1.0, "Multiply --volume-column by this to get mL (e.g. 1000 for litres).", gt=0.0)
    quantify_draws: int = option(
        1000, "Bootstrap draws of each sample's composition intervals in samples.parquet; 0 = no intervals.", ge=0
    )
    quantify_method: Literal["auto", "cc", "acc", "pcc", "pacc", "emq"] = option(
        "auto", "Quantification correction of samples.parquet; auto: the one lut chose on val bags."
    )
    max_bad_fraction: float = option(0.05, "Fail when more of the input (files, bins) is unreadable.", ge=0.0, le=1.0)
    thumbnails: int = option(8, "Least certain objects shown per sample on the report page.", ge=0, le=100)
    batch_size: int = option(64, "Objects per forward pass and per index search.", ge=1, digest=False)
    workers: int = option(
        -1, "Processes decoding and segmenting; -1 = cores - 1 (at least 1); 0 = none.", ge=-1, digest=False
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N.", digest=False)

    @property
    def variant(self) -> str:
        return "pruned" if self.pruned else "full"

    def validate(self) -> None:
        if self.reject_below is not None and not -1.0 <= self.reject_below <= 1.0:
            raise BadInputError(f"--reject-below is a cosine similarity in [-1, 1], got {self.reject_below}")


def instance(cfg: ClassifyConfig) -> str:
    """The run's sub-prefix: classify/<NAME>."""
    if not cfg.name:
        raise BadInputError("classify needs --name NAME: its outputs go to classify/<NAME>/")
    if not NAME.match(cfg.name):
        raise BadInputError(
            f"--name {cfg.name!r}: letters, digits, '.', '_' and '-' only (starting with a letter or digit)"
        )
    return cfg.name
