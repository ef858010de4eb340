"""`plankton query`'s options, each declared once like a stage's (type, default, help); light to import."""

from __future__ import annotations

from typing import Literal, get_args

from ..config import option, stage_config
from ..errors import BadInputError
from ..lut.config import Vote
from ..scoring import SelectBy

Format = Literal["table", "csv", "jsonl", "parquet", "ecotaxa"]
UnknownScore = Literal["knn", "mahalanobis", "vim", "energy", "msp", "similarity"]
UNKNOWN_SCORE_HELP = (
    "Open-set score flagging objects of no known class (answered 'unknown'): knn, mahalanobis, vim, energy, msp "
    "or similarity [the LUT's chosen one; none when the LUT has no open-set fit]."
)
Answer = Literal["auto", "lut"]
ANSWER_HELP = (
    "auto: the answer val chose when the LUT was built (lut/answer.json: the LUT, the LUT with morphometric "
    "features, a head on the embedding with or without them, or head and LUT together); lut: the plain LUT's vote "
    "(--k, --vote). The pruned index always gives the plain LUT's."
)
UNKNOWN_RECALL_HELP = "Recall of known objects the open-set threshold keeps (0-1) [the LUT's stored one]."
FORMATS: tuple[str, ...] = get_args(Format)
__all__ = ["ANSWER_HELP", "Answer", "FORMATS", "Format", "QueryConfig", "UnknownScore", "Vote"]


@stage_config
class QueryConfig:
    """How new images are classified against the LUT, and how `--calibrate` picks the rejection threshold."""

    k: int = option(5, "Neighbours to return (and to vote with).")
    vote: Vote = option("top1", "top1: the nearest neighbour's class; weighted: similarity-weighted vote of the k.")
    answer: Answer = option("auto", ANSWER_HELP)
    reject_below: float | None = option(
        None,
        "Answer 'unknown' when the best similarity is below this [the calibrated threshold, if any].",
        metavar="FLOAT",
    )
    calibrate: bool = option(
        False, "Pick the threshold on val for --target-precision and store it in lut/index.json.", digest=False
    )
    target_precision: float = option(
        0.95, "Precision of accepted val predictions (as --select-by defines it) that --calibrate aims for."
    )
    select_by: SelectBy = option(
        "accuracy",
        "--calibrate's precision: accuracy = share of accepted predictions right; balanced_accuracy = mean over "
        "true classes; macro_f1 = mean over predicted classes (macro precision).",
    )
    min_class_recall: float = option(
        1.0,
        "--calibrate's guard: no class may lose more than this much val recall to rejection "
        "(0-1; 0.10 = 10 points; 1 = off).",
    )
    unknown_score: UnknownScore | None = option(None, UNKNOWN_SCORE_HELP, metavar="SCORE")
    unknown_recall: float | None = option(None, UNKNOWN_RECALL_HELP, gt=0.0, le=1.0, metavar="FLOAT")
    pruned: bool = option(False, "Search the pruned index instead of the full one.")
    checkpoint: str = option(
        "", "Checkpoint key to embed with [sweep/selection.json's]; must match the index.", metavar="KEY"
    )
    crop: bool = option(
        True,
        "Segment each image as the crop stage did and embed its largest object; --no-crop embeds images whole.",
    )
    out: str | None = option(None, "Write the rows to this path or URI instead of stdout.", metavar="URI", digest=False)
    format: Format | None = option(
        None,
        "table (stdout default), csv, jsonl, parquet, or ecotaxa (--out PATH.zip: an EcoTaxa import archive "
        "with the images) [from --out's suffix].",
        digest=False,
    )
    batch_size: int = option(64, "Images per forward pass.", digest=False)
    device: str = option("auto", "auto, cpu, cuda, cuda:N.", digest=False)

    @property
    def variant(self) -> str:
        """The index searched: full, or pruned with --pruned."""
        return "pruned" if self.pruned else "full"

    def validate(self) -> None:
        if self.k < 1:
            raise BadInputError(f"--k must be >= 1, got {self.k}")
        if self.reject_below is not None and not -1.0 <= self.reject_below <= 1.0:
            raise BadInputError(f"--reject-below is a cosine similarity in [-1, 1], got {self.reject_below}")
        if self.batch_size < 1:
            raise BadInputError("--batch-size must be >= 1")
        if not 0.0 < self.target_precision <= 1.0:
            raise BadInputError(f"--target-precision must lie in (0, 1], got {self.target_precision}")
        if not 0.0 <= self.min_class_recall <= 1.0:
            raise BadInputError(
                f"--min-class-recall must lie in [0, 1] (0.10 = 10 points of recall), got {self.min_class_recall}"
            )
