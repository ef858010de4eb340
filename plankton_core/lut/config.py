"""The lut stage's options, each declared once (type, default, bounds, help)."""

from __future__ import annotations

from typing import Literal, get_args

from ..config import option, stage_config
from ..errors import BadInputError
from ..scoring import SelectBy

IndexType = Literal["flat", "ivf", "hnsw"]
Vote = Literal["top1", "weighted"]
VOTES: tuple[str, ...] = get_args(Vote)


@stage_config
class LutConfig:
    """How the look-up table is built, pruned and evaluated.

    The gallery is what queries are matched against (train + val by default).
    The pruning threshold is chosen on val queried against train only (val is
    never its own gallery): the most pruning whose val loss is bounded within
    --max-loss. Test measures the retrieval classifier and what the chosen
    pruning costs there.
    A query never matches gallery items cut from its own source image.
    """

    gallery_splits: tuple[str, ...] = option(("train", "val"), "Splits that form the gallery, comma-separated.")
    checkpoint: str = option("", "Checkpoint key under the root; empty = the one sweep/selection.json chose.")
    index: IndexType = option("flat", "flat = exact; ivf / hnsw = approximate, tuned to --recall-target.")
    k: int = option(5, "Neighbours for the kNN vote.", ge=1)
    vote: Vote = option("top1", "Vote the pruning sweep is judged by.")
    recall_target: float = option(0.99, "ivf/hnsw: recall@1 against exact search to reach.", gt=0.0, le=1.0)
    recall_k: int = option(10, "ivf/hnsw: also report recall@recall-k.", ge=1)
    ivf_nlist: int = option(0, "ivf: number of lists; 0 = about 4·√n.", ge=0)
    hnsw_m: int = option(32, "hnsw: links per node.", ge=2)
    hnsw_ef_construction: int = option(80, "hnsw: candidate list size while building.", ge=1)
    prune: bool = option(True, "Sweep the near-duplicate threshold on val and write a pruned index.")
    prune_min: float = option(0.80, "Lowest T of the sweep.", ge=-1.0, le=1.0)
    prune_max: float = option(1.00, "Highest T of the sweep.", ge=-1.0, le=1.0)
    prune_step: float = option(0.01, "Step of the sweep.", gt=0.0)
    select_by: SelectBy = option(
        "accuracy",
        "Criterion whose val loss is bounded: accuracy (Tango's paired score bound) "
        "or balanced_accuracy / macro_f1 (paired stratified bootstrap).",
    )
    max_loss: float = option(
        0.01,
        "Non-inferiority margin: a T is eligible only when the one-sided upper confidence bound of its val loss "
        "(unpruned − pruned, 0–1; 0.01 = 1 point) is at most this.",
        ge=0.0,
        lt=1.0,
    )
    alpha: float = option(
        0.05,
        "One-sided level of that upper bound: 0.05 = a 95% one-sided bound.",
        gt=0.0,
        le=0.5,
    )
    min_class_recall: float = option(
        0.10,
        "Class-recall guard: no class may lose more than this much val recall (0–1; 0.10 = 10 points) at the chosen T.",
        ge=0.0,
        le=1.0,
    )
    bootstrap: int = option(
        1000, "Stratified bootstrap draws for the paired loss bound and the test-split intervals.", ge=100
    )
    seed: int = option(0, "Seed of the bootstrap draws.", ge=0)
    prune_candidates: int = option(
        100, "Nearest items per val query kept from the full gallery and reused for every T (>= --k).", ge=1
    )
    ood: tuple[str, ...] = option(
        (),
        "Far-OOD sets: folders or URIs (file://, s3://) of images that belong to no known class, comma-separated; "
        "measured in lut/ood.json beside the near-OOD set (stats --unseen-classes).",
    )
    ood_k: int = option(0, "The knn open-set score's neighbour; 0 = chosen on val among 1, 5, 10, 20, 50.", ge=0)
    ood_recall: float = option(0.95, "Known-class recall the stored unknown threshold keeps on val.", gt=0.0, le=1.0)
    ood_folds: int = option(10, "Leave-one-class-out val folds that choose the open-set score (at most).", ge=1)
    quantify_bags: int = option(
        100,
        "Bags of 100-500 items at random mixes per split: val chooses the count correction, test reports; 0 = off.",
        ge=0,
    )
    quantify_draws: int = option(1000, "Bootstrap draws of each test bag's proportion intervals.", ge=50)
    morpho_weight: str = option(
        "auto",
        "Weight w of crop's standardised morphometric features beside the embedding, chosen on val with the kNN "
        "vote's k in 1, 5, 10 and measured on test against the plain LUT (lut/retrieval.json `morpho`): auto = "
        "w in 0, 0.25, 0.5, 1, 2 when crop/features.parquet is there; a number = 0 or it; 0 = off.",
    )
    batch_size: int = option(256, "Crops per forward pass.", ge=1, digest=False)
    device: str = option("auto", "auto, cpu, cuda, cuda:N.", digest=False)
    workers: int = option(0, "Decoding threads; 0 = automatic.", ge=0, digest=False)
    latency_queries: int = option(5, "Single-query searches timed per T of the sweep.", ge=0, digest=False)
    add: str = option(
        "", "Grow and correct the built LUT from validated labels (an EcoTaxa export or class folders), no retraining."
    )
    allow_new_classes: bool = option(False, "--add: accept classes the LUT has never seen.")

    def validate(self) -> None:
        if not self.gallery_splits:
            raise BadInputError("gallery_splits is empty: name at least one split (e.g. train,val)")
        if self.prune_min > self.prune_max:
            raise BadInputError(
                "prune grid must satisfy -1 <= prune_min <= prune_max <= 1 and prune_step > 0, "
                f"got {self.prune_min}..{self.prune_max} by {self.prune_step}"
            )
        if self.morpho_weight != "auto":
            try:
                ok = float(self.morpho_weight) >= 0
            except ValueError:
                ok = False
            if not ok:
                raise BadInputError(f"--morpho-weight takes auto or a number >= 0, not {self.morpho_weight!r}")
        if self.prune_candidates < self.k:
            raise BadInputError(f"prune_candidates ({self.prune_candidates}) must be >= k ({self.k})")
