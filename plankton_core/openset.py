"""Open-set scores: how unlike every known class a query is (higher = more likely unknown).

Six scores over what the pipeline already computes, the L2-normalised
embeddings the LUT is queried with and the similarities of their nearest
gallery neighbours from the same FAISS search:

- `knn`: minus the similarity to the k-th nearest gallery item (Sun et al., 2022);
- `similarity`: minus the best similarity (today's baseline; `knn` with k = 1);
- `mahalanobis`: the smallest class-conditional Mahalanobis distance, class means and one shared covariance
  fitted on train (Lee et al., 2018);
- `energy`: minus the log-sum-exp of the linear head's logits (Liu et al., 2020);
- `msp`: minus the largest softmax probability (Hendrycks & Gimpel, 2017);
- `vim`: the residual of the features outside the principal subspace of train, scaled into a virtual logit, minus
  the energy (Wang et al., 2022).

The linear head is a softmax regression fitted on the normalised train embeddings here, not linear-sweep's head,
which acts on raw features that a query never has. The lut stage fits everything on train (`lut/open_set.npz`),
chooses the score on val and stores the threshold in `lut/index.json`; `load_open_set` is what query uses.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize

from .artifacts import LUT_INDEX_JSON, LUT_OPEN_SET
from .errors import BadInputError
from .store import Store
from .tables import read_json

SCORES = ("knn", "mahalanobis", "vim", "energy", "msp", "similarity")
DEFAULT_RECALL = 0.95


# --- the scores: one function each ---------------------------------------------------------------------------


def knn_score(sims: np.ndarray, k: int) -> np.ndarray:
    """Minus the similarity to the k-th nearest neighbour (`sims` sorted descending, n × ≥k)."""
    if sims.shape[1] < k:
        raise ValueError(f"knn with k={k} needs {k} neighbours, got {sims.shape[1]}")
    return -np.asarray(sims[:, k - 1], dtype=np.float64)


def similarity_score(sims: np.ndarray) -> np.ndarray:
    """Minus the best similarity."""
    return knn_score(sims, 1)


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """Row-wise log Σ exp, stable."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float64), by logsumexp."""
    return np.exp(logits - logsumexp(logits)[:, None])


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The free energy −T·log Σ exp(logit/T)."""
    return -temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature)


def msp_score(logits: np.ndarray) -> np.ndarray:
    """Minus the largest softmax probability."""
    z = np.asarray(logits, dtype=np.float64)
    return -np.exp(z.max(axis=1) - logsumexp(z))


def mahalanobis_score(
    x: np.ndarray, means: np.ndarray, precision: np.ndarray, means_norm: np.ndarray | None = None
) -> np.ndarray:
    """½ · the smallest squared Mahalanobis distance to a class mean (shared precision matrix); `means_norm`
    (μ_cᵀPμ_c per class) may be given once instead of computed at each call."""
    x = np.asarray(x, dtype=np.float64)
    xp = x @ precision
    if means_norm is None:
        means_norm = np.einsum("cd,dk,ck->c", means, precision, means)
    quad = np.einsum("nd,nd->n", xp, x)[:, None] - 2.0 * (xp @ means.T) + means_norm
    return 0.5 * np.maximum(quad.min(axis=1), 0.0)


def vim_score(x: np.ndarray, logits: np.ndarray, origin: np.ndarray, principal: np.ndarray, alpha: float) -> np.ndarray:
    """alpha · ‖residual of x − origin outside the principal subspace‖ − log Σ exp(logits)."""
    centred = np.asarray(x, dtype=np.float64) - origin
    inside = centred @ principal
    residual = np.sqrt(np.maximum(np.einsum("nd,nd->n", centred, centred) - np.einsum("nd,nd->n", inside, inside), 0))
    return alpha * residual - logsumexp(logits)


# --- fitting on train ----------------------------------------------------------------------------------------


@dataclass
class LinearHead:
    """Softmax regression on normalised embeddings: logits = x·Wᵀ + b."""

    weight: np.ndarray  # (C, d)
    bias: np.ndarray  # (C,)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weight.T + self.bias


def fit_head(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-4, iterations: int = 200) -> LinearHead:
    """A multinomial logistic regression (L-BFGS, L2 penalty `l2` on the weights) on `x` with labels 0..n_classes-1."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if n_classes < 2 or n == 0:
        return LinearHead(np.zeros((max(n_classes, 1), d)), np.zeros(max(n_classes, 1)))
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), np.asarray(y, dtype=np.int64)] = 1.0

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: n_classes * d].reshape(n_classes, d), theta[n_classes * d :]
        z = x @ w.T + b
        lse = logsumexp(z)
        p = np.exp(z - lse[:, None])
        loss = float((lse - (z * onehot).sum(axis=1)).mean() + l2 * (w**2).sum())
        g = (p - onehot) / n
        return loss, np.concatenate([(g.T @ x + 2 * l2 * w).ravel(), g.sum(axis=0)])

    theta0 = np.zeros(n_classes * (d + 1))
    theta = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": iterations}).x
    return LinearHead(theta[: n_classes * d].reshape(n_classes, d), theta[n_classes * d :])


@dataclass
class Gaussians:
    """Class means and the precision of their shared covariance."""

    means: np.ndarray  # (C, d)
    precision: np.ndarray  # (d, d)

    means_norm: np.ndarray = field(init=False)  # μ_cᵀPμ_c, once

    def __post_init__(self) -> None:
        self.means_norm = np.einsum("cd,dk,ck->c", self.means, self.precision, self.means)


def shared_precision(x: np.ndarray, y: np.ndarray, n_classes: int, ridge: float) -> Gaussians:
    """Means per class and the inverse of Σ_c Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ / n + ridge·I."""
    x = np.asarray(x, dtype=np.float64)
    means = np.stack([x[y == c].mean(axis=0) if (y == c).any() else np.zeros(x.shape[1]) for c in range(n_classes)])
    centred = x - means[y]
    cov = centred.T @ centred / max(len(x), 1)
    cov[np.diag_indices_from(cov)] += ridge
    return Gaussians(means, np.linalg.inv(cov))


def fit_mahalanobis(x: np.ndarray, y: np.ndarray, n_classes: int, shrink: float = 1e-3) -> Gaussians:
    """Lee et al.'s Gaussians; the ridge is `shrink` × the mean variance, so fewer items than dimensions still fit."""
    x = np.asarray(x, dtype=np.float64)
    means = np.stack([x[y == c].mean(axis=0) if (y == c).any() else np.zeros(x.shape[1]) for c in range(n_classes)])
    variance = float(((x - means[y]) ** 2).sum() / max(len(x), 1) / x.shape[1])
    return shared_precision(x, y, n_classes, ridge=shrink * max(variance, 1e-12))


@dataclass
class VimFit:
    """ViM's origin (−W⁺b), principal subspace (d × D, orthonormal columns) and alpha."""

    origin: np.ndarray
    principal: np.ndarray
    alpha: float


def fit_vim(x: np.ndarray, head: LinearHead, dim: int) -> VimFit:
    """The top-`dim` eigenvectors of the uncentred covariance about −W⁺b, and alpha = mean max logit / mean residual."""
    return fit_vim_dims(x, head, [dim])[dim]


def fit_vim_dims(x: np.ndarray, head: LinearHead, dims: list[int]) -> dict[int, VimFit]:
    """`fit_vim` for several subspace sizes from one eigendecomposition."""
    x = np.asarray(x, dtype=np.float64)
    origin = -(np.linalg.pinv(head.weight) @ head.bias)
    centred = x - origin
    _, vectors = np.linalg.eigh(centred.T @ centred / max(len(x), 1))
    max_logit = head.logits(x).max(axis=1).mean()
    norms = (centred**2).sum(axis=1)
    out = {}
    for dim in dims:
        principal = np.ascontiguousarray(vectors[:, vectors.shape[1] - dim :])
        inside = centred @ principal
        residual = np.sqrt(np.maximum(norms - (inside**2).sum(axis=1), 0)).mean()
        out[dim] = VimFit(origin, principal, float(max_logit / residual) if residual > 0 else 0.0)
    return out


def vim_dims(d: int) -> list[int]:
    """The principal-subspace sizes tried on val: d/8, d/4, d/2 (at least 1, below d)."""
    return sorted({max(1, min(d - 1, d // f)) for f in (8, 4, 2)}) if d > 1 else [1]


@dataclass
class Fitted:
    """Everything fitted on train that the scores need, and their settings (knn's k, ViM's subspace size)."""

    head: LinearHead
    gaussians: Gaussians
    vim: VimFit
    k: int

    def score(self, name: str, x: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """Score `name` of embeddings `x` whose nearest gallery similarities are `sims`."""
        if name == "knn":
            return knn_score(sims, self.k)
        if name == "similarity":
            return similarity_score(sims)
        if name == "mahalanobis":
            g = self.gaussians
            return mahalanobis_score(x, g.means, g.precision, g.means_norm)
        logits = self.head.logits(x)
        if name == "energy":
            return energy_score(logits)
        if name == "msp":
            return msp_score(logits)
        if name == "vim":
            return vim_score(x, logits, self.vim.origin, self.vim.principal, self.vim.alpha)
        raise BadInputError(f"unknown open-set score {name!r}: use {', '.join(SCORES)}")


def neighbours_needed(name: str, k: int) -> int:
    """Gallery neighbours a score reads from the search."""
    return k if name == "knn" else 1 if name == "similarity" else 0


def threshold_for_recall(known_scores: np.ndarray, recall: float) -> float:
    """The smallest score t with at least `recall` of `known_scores` ≤ t (a query is unknown when its score > t)."""
    s = np.sort(np.asarray(known_scores, dtype=np.float64))
    if not len(s):
        raise BadInputError("no val scores of known items to set an unknown threshold from; rebuild the lut")
    return float(s[min(len(s) - 1, max(0, math.ceil(recall * len(s) - 1e-9) - 1))])


# --- stored and loaded ---------------------------------------------------------------------------------------


def save_fit(root: Store, fitted: Fitted, val_known: dict[str, np.ndarray]) -> None:
    """lut/open_set.npz: the head, the Gaussians, ViM's fit, knn's k, and each score's val scores of known items
    per LUT variant (`val_known` keys like `knn/full`), from which any recall's threshold follows."""
    arrays: dict[str, Any] = {
        "head_weight": fitted.head.weight,
        "head_bias": fitted.head.bias,
        "means": fitted.gaussians.means,
        "precision": fitted.gaussians.precision,
        "vim_origin": fitted.vim.origin,
        "vim_principal": fitted.vim.principal,
        "vim_alpha": np.float64(fitted.vim.alpha),
        "knn_k": np.int64(fitted.k),
    }
    arrays.update({f"val_known/{key}": np.asarray(v, np.float64) for key, v in val_known.items()})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    root.write_bytes(LUT_OPEN_SET, buf.getvalue())


def load_fit(root: Store) -> tuple[Fitted, dict[str, np.ndarray]]:
    """What `save_fit` wrote."""
    try:
        with np.load(io.BytesIO(root.read_bytes(LUT_OPEN_SET)), allow_pickle=False) as z:
            a = {name: z[name] for name in z.files}
    except (OSError, ValueError, KeyError) as exc:
        raise BadInputError(
            f"{root.uri}/{LUT_OPEN_SET} is unreadable ({exc}); rebuild with `plankton lut --force`"
        ) from None
    fitted = Fitted(
        LinearHead(a["head_weight"], a["head_bias"]),
        Gaussians(a["means"], a["precision"]),
        VimFit(a["vim_origin"], a["vim_principal"], float(a["vim_alpha"])),
        int(a["knn_k"]),
    )
    return fitted, {k.split("/", 1)[1]: v for k, v in a.items() if k.startswith("val_known/")}


@dataclass
class OpenSet:
    """A loaded open-set scorer: one score, its threshold for the asked known-class recall."""

    name: str
    threshold: float
    k: int  # gallery neighbours `score` needs in `sims`
    recall: float
    fitted: Fitted

    def score(self, features: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """OOD scores (higher = more unknown) of L2-normalised `features` (n × d) with neighbour similarities
        `sims` (n × ≥k, sorted descending) from the LUT's search."""
        return self.fitted.score(self.name, features, sims)

    def unknown(self, scores: np.ndarray) -> np.ndarray:
        """True where a score lies above the threshold."""
        return np.asarray(scores) > self.threshold


def load_open_set(
    root: Store, variant: str = "full", score: str | None = None, recall: float | None = None
) -> OpenSet | None:
    """The scorer the lut stage fitted (None when lut/index.json records no open-set fit). `score`: one of SCORES
    (default: the one chosen on val); `recall`: known-class recall to keep (default: the stored one, 0.95)."""
    info = read_json(root, LUT_INDEX_JSON).get("open_set") if root.exists(LUT_INDEX_JSON) else None
    if not info or not root.exists(LUT_OPEN_SET):
        return None
    name = score or str(info["score"])
    if name not in SCORES:
        raise BadInputError(f"unknown open-set score {name!r}: use {', '.join(SCORES)}")
    if recall is not None and not 0.0 < recall <= 1.0:
        raise BadInputError(f"the known-class recall must lie in (0, 1], got {recall}")
    target = float(info.get("recall", DEFAULT_RECALL)) if recall is None else float(recall)
    fitted, val_known = load_fit(root)
    stored = info.get("thresholds", {}).get(variant, {})
    if recall is None or math.isclose(target, float(info.get("recall", DEFAULT_RECALL))):
        if name in stored:
            return OpenSet(name, float(stored[name]), neighbours_needed(name, fitted.k), target, fitted)
    known = val_known.get(f"{name}/{variant}", val_known.get(f"{name}/full"))
    if known is None:
        raise BadInputError(f"{root.uri}/{LUT_OPEN_SET} holds no val scores of {name}; rebuild the lut")
    return OpenSet(name, threshold_for_recall(known, target), neighbours_needed(name, fitted.k), target, fitted)


__all__ = [
    "SCORES",
    "Fitted",
    "Gaussians",
    "LinearHead",
    "OpenSet",
    "VimFit",
    "energy_score",
    "fit_head",
    "fit_mahalanobis",
    "fit_vim",
    "knn_score",
    "load_open_set",
    "mahalanobis_score",
    "msp_score",
    "shared_precision",
    "similarity_score",
    "softmax",
    "threshold_for_recall",
    "vim_score",
]
