"""The lut stage's config: defaults here, YAML and flags on top; run.json records the result."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BadInputError
from .index import INDEX_TYPES
from .retrieval import VOTES


@dataclass
class LutConfig:
    """How the look-up table is built, pruned and evaluated.

    The gallery is what queries are matched against (train + val by default);
    val picks the pruning threshold and test measures the retrieval classifier.
    A query never matches gallery items cut from its own source image.
    """

    gallery_splits: tuple[str, ...] = ("train", "val")
    checkpoint: str = ""  # key of a SupCon checkpoint under the root; default: the one sweep/selection.json chose
    index: str = "flat"  # flat (exact) | ivf | hnsw
    k: int = 5  # neighbours per query, for the kNN vote
    vote: str = "top1"  # the vote the prune sweep judges by: top1 | weighted
    recall_target: float = 0.99  # ivf/hnsw: raise nprobe/efSearch until recall@1 vs exact reaches this
    recall_k: int = 10  # also report recall@recall_k
    ivf_nlist: int = 0  # 0 = about 4·√n
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    prune: bool = True
    prune_min: float = 0.80
    prune_max: float = 1.00
    prune_step: float = 0.01
    prune_tolerance: float = 0.005  # val accuracy may drop at most this much (absolute) below the unpruned index
    prune_candidates: int = 100  # nearest items per val query kept from the full gallery and reused for every T
    batch_size: int = field(default=256, metadata={"digest": False})
    device: str = field(default="auto", metadata={"digest": False})
    workers: int = field(default=0, metadata={"digest": False})  # decode threads; 0 = automatic
    latency_queries: int = field(default=5, metadata={"digest": False})  # single-query searches timed per T

    def validate(self) -> None:
        if not self.gallery_splits:
            raise BadInputError("gallery_splits is empty: name at least one split (e.g. train,val)")
        if self.index not in INDEX_TYPES:
            raise BadInputError(f"unknown index type {self.index!r}: use one of {', '.join(INDEX_TYPES)}")
        if self.vote not in VOTES:
            raise BadInputError(f"unknown vote {self.vote!r}: use one of {', '.join(VOTES)}")
        if self.k < 1 or self.recall_k < 1:
            raise BadInputError("k and recall_k must be >= 1")
        if not 0.0 < self.recall_target <= 1.0:
            raise BadInputError(f"recall_target must lie in (0, 1], got {self.recall_target}")
        if not -1.0 <= self.prune_min <= self.prune_max <= 1.0 or self.prune_step <= 0:
            raise BadInputError(f"prune grid must satisfy -1 <= prune_min <= prune_max <= 1 and prune_step > 0, got {self.prune_min}..{self.prune_max} by {self.prune_step}")
        if self.prune_tolerance < 0:
            raise BadInputError("prune_tolerance must be >= 0")
        if self.prune_candidates < self.k:
            raise BadInputError(f"prune_candidates ({self.prune_candidates}) must be >= k ({self.k})")
        if self.ivf_nlist < 0 or self.hnsw_m < 2 or self.hnsw_ef_construction < 1:
            raise BadInputError("ivf_nlist must be >= 0, hnsw_m >= 2 and hnsw_ef_construction >= 1")
        if self.batch_size < 1 or self.workers < 0 or self.latency_queries < 0:
            raise BadInputError("batch_size must be >= 1, workers >= 0 and latency_queries >= 0")
