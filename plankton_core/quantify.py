"""Per-sample class proportions corrected for the classifier's confusions, with intervals (quantification).

Counting the classifier's answers (CC, classify and count) is biased whenever a sample's class mix differs
from the one the classifier was calibrated on. The corrections, each its own function:

- `cc`: predicted counts over the known objects;
- `acc`: CC solved through the confusion rates P(predicted i | true j) estimated on val, clipped to the simplex
  (Forman 2008; Sosik & Olson 2007 did this for IFCB counts);
- `pcc` / `pacc`: the same from posteriors, the kNN vote's class shares calibrated on val (Bella et al. 2010);
- `emq`: EM on the posteriors under prior shift (Saerens, Latinne & Decaestecker 2002).

They equal QuaPy's CC, ACC/PACC (solver "exact-raise", norm "clip"), PCC and EMQ (Moreo et al.) on the same
inputs (tests/test_quantify.py). `sample_composition` gives one sample's table: per class its count, CC and
corrected proportion with a seeded bootstrap interval that resamples the sample's objects and the val set
together, and per-mL concentrations when the volume is known. Objects flagged unknown (open set) are their own
row and never spread over the known classes. The artificial-prevalence protocol (`draw_bags`, `run_bags`,
`summarize`) measures the methods on bags of 100–500 objects at mixes drawn uniformly over the simplex.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from .artifacts import LUT_QUANT_CALIBRATION
from .store import Store

METHODS: tuple[str, ...] = ("cc", "acc", "pcc", "pacc", "emq")
SOFT = frozenset({"pcc", "pacc", "emq"})
ADJUSTED = frozenset({"acc", "pacc"})
NAMES = {"cc": "CC", "acc": "ACC", "pcc": "PCC", "pacc": "PACC", "emq": "EMQ"}
UNKNOWN = "unknown"
RARE = 0.01  # coverage is also reported apart for classes under this share of a bag's mix
BAG_SIZES = (100, 500)
EM_EPSILON = 1e-4  # QuaPy's EMQ.EPSILON and MAX_ITER
EM_MAX_ITER = 1000
EM_TOLERANCE = EM_EPSILON  # bootstrap draws: every draw's mean change per step below this (from the point estimate)
LOG_BOUNDS = ([np.log(1e-4), np.log(0.05)], [np.log(10.0), np.log(20.0)])  # smoothing, power of the calibration
SMALL_WEIGHTS = 1 << 20  # bootstrap weights this small (draws × objects) are kept for the next method
BLAS_THREADS_FROM = 5000  # objects: a smaller sample's products run on one BLAS thread
CHUNK = 200  # bootstrap draws handled at once (bounds memory: CHUNK × objects weights)
MAX_CONDITION = 1e10  # confusion rates this ill-conditioned count as singular


class Unsolvable(ValueError):
    """A method cannot give an estimate for this input (the reason is the message)."""


# ---------------------------------------------------------------- calibration (what lut stores, what classify loads)


@dataclass
class Calibration:
    """What the corrections need from val: its true labels, predictions and raw vote shares, the training prior,
    the posterior calibration fitted on val, and the method chosen on val bags (with the fallback order)."""

    classes: list[str]
    labels: np.ndarray  # (n_val,) true class index
    pred: np.ndarray  # (n_val,) predicted class index, -1 = none (left out of the rates)
    scores: np.ndarray  # (n_val, C) raw class shares of the weighted kNN vote
    prior: np.ndarray  # (C,) class prevalence the scores were made under (the gallery's)
    smoothing: float = 0.01
    power: float = 1.0
    vote: str = "top1"
    k: int = 5
    chosen: str = "cc"
    ranking: tuple[str, ...] = METHODS
    extra: dict[str, Any] = field(default_factory=dict)
    _draws: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def rate_draws(self, method: str, n_boot: int, seed: int) -> np.ndarray:
        """(n_boot, C, C) rates of val resampled within each true class (crisp for ACC, mean posteriors for
        PACC), from their own seeded stream; kept, so that many bags share one set."""
        key = (method, n_boot, seed)
        if key not in self._draws:
            if len(self._draws) > 3:
                self._draws.clear()
            rng = np.random.default_rng([seed, 1])
            self._draws[key] = (_crisp_rate_draws if method == "acc" else _soft_rate_draws)(rng, self, n_boot)
        return self._draws[key]

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """Posteriors from raw vote shares with this calibration."""
        return calibrate_scores(scores, self.smoothing, self.power)

    @cached_property
    def posteriors(self) -> np.ndarray:
        return self.calibrate(self.scores)

    @cached_property
    def rates(self) -> np.ndarray:
        return crisp_rates(self.labels, self.pred, self.n_classes)

    @cached_property
    def soft_rates(self) -> np.ndarray:
        return soft_rates(self.labels[self.pred >= 0], self.posteriors[self.pred >= 0], self.n_classes)

    @cached_property
    def missing(self) -> list[str]:
        """Classes with no val item (with a prediction): ACC and PACC cannot estimate their rates."""
        seen = np.bincount(self.labels[self.pred >= 0], minlength=self.n_classes)
        return [c for c, n in zip(self.classes, seen) if n == 0]


def make_calibration(
    classes: list[str], labels: np.ndarray, pred: np.ndarray, scores: np.ndarray, prior: np.ndarray, **kw: Any
) -> Calibration:
    """A Calibration with the posterior calibration fitted on these val items."""
    labels = np.asarray(labels, np.int64)
    pred = np.asarray(pred, np.int64)
    scores = np.asarray(scores, np.float64)
    smoothing, power = fit_posterior_calibration(scores, labels)
    return Calibration(list(classes), labels, pred, scores, np.asarray(prior, np.float64), smoothing, power, **kw)


def calibration_bytes(cal: Calibration) -> bytes:
    """The calibration as one .npz (arrays, and the rest as JSON)."""
    meta = {
        "classes": cal.classes,
        "smoothing": cal.smoothing,
        "power": cal.power,
        "vote": cal.vote,
        "k": cal.k,
        "chosen": cal.chosen,
        "ranking": list(cal.ranking),
        "extra": cal.extra,
    }
    buf = io.BytesIO()
    np.savez(
        buf,
        labels=cal.labels,
        pred=cal.pred,
        scores=cal.scores.astype(np.float32),
        prior=cal.prior,
        meta=np.array(json.dumps(meta)),
    )
    return buf.getvalue()


def calibration_from_bytes(data: bytes) -> Calibration:
    with np.load(io.BytesIO(data)) as z:
        meta = json.loads(str(z["meta"]))
        return Calibration(
            meta["classes"],
            z["labels"].astype(np.int64),
            z["pred"].astype(np.int64),
            z["scores"].astype(np.float64),
            z["prior"].astype(np.float64),
            float(meta["smoothing"]),
            float(meta["power"]),
            meta["vote"],
            int(meta["k"]),
            meta["chosen"],
            tuple(meta["ranking"]),
            meta.get("extra", {}),
        )


def load_calibration(store: Store, key: str = LUT_QUANT_CALIBRATION) -> Calibration:
    """The calibration the lut stage stored (lut/quantification_calibration.npz)."""
    return calibration_from_bytes(store.read_bytes(key))


# ---------------------------------------------------------------- posteriors


ANSWER_VOTE = "answer:"  # a calibration's vote for an answer other than the LUT's (lut/answer.json): "answer:<name>"


def one_hot(pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, C) shares that put all of an item's weight on its predicted class (none for pred -1)."""
    pred = np.asarray(pred, np.int64)
    out = np.zeros((len(pred), n_classes))
    out[np.flatnonzero(pred >= 0), pred[pred >= 0]] = 1.0
    return out


def vote_shares(neighbour_labels: np.ndarray, neighbour_sims: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, C) class shares of the weighted kNN vote: each neighbour votes with its similarity (negatives count 0),
    as lut's weighted vote; rows with no vote are all zero. Labels -1 = no neighbour."""
    labels = np.asarray(neighbour_labels, np.int64)
    sims = np.asarray(neighbour_sims, np.float64)
    n = labels.shape[0]
    weights = np.where(labels >= 0, np.clip(sims, 0.0, None), 0.0)
    flat = (np.arange(n)[:, None] * n_classes + np.maximum(labels, 0)).ravel()
    votes = np.bincount(flat, weights=weights.ravel(), minlength=n * n_classes).reshape(n, n_classes)
    total = votes.sum(axis=1, keepdims=True)
    return np.where(total > 0, votes / np.where(total > 0, total, 1.0), 0.0)


def calibrate_scores(scores: np.ndarray, smoothing: float, power: float) -> np.ndarray:
    """Posteriors p_c ∝ (s_c + smoothing)^power from class shares s (never zero, so EM and logs are defined)."""
    logits = power * np.log(np.asarray(scores, np.float64) + smoothing)
    logits -= logits.max(axis=1, keepdims=True) if len(logits) else 0.0
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def fit_posterior_calibration(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Smoothing and power minimising the val negative log-likelihood (Nelder–Mead on their logs)."""
    from scipy.optimize import minimize

    if len(labels) == 0:
        return 0.01, 1.0
    rows = np.arange(len(labels))

    def nll(theta: np.ndarray) -> float:
        a, b = np.exp(np.clip(theta, LOG_BOUNDS[0], LOG_BOUNDS[1]))
        return float(-np.log(calibrate_scores(scores, a, b)[rows, labels]).mean())

    res = minimize(nll, x0=np.array([np.log(0.05), 0.0]), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-8})
    a, b = np.exp(np.clip(res.x, LOG_BOUNDS[0], LOG_BOUNDS[1]))
    return float(a), float(b)


# ---------------------------------------------------------------- the methods


def crisp_rates(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """M[i, j] = P(predicted i | true j) on val (items without a prediction left out); a class with no item keeps
    a zero column."""
    keep = np.asarray(pred) >= 0
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (np.asarray(pred)[keep], np.asarray(labels)[keep]), 1.0)
    n = counts.sum(axis=0)
    return np.divide(counts, n, out=np.zeros_like(counts), where=n > 0)


def soft_rates(labels: np.ndarray, posteriors: np.ndarray, n_classes: int) -> np.ndarray:
    """M[i, j] = mean posterior of class i over val items of true class j."""
    onehot = np.eye(n_classes)[np.asarray(labels, np.int64)]
    n = onehot.sum(axis=0)
    sums = np.asarray(posteriors).T @ onehot
    return np.divide(sums, n, out=np.zeros_like(sums), where=n > 0)


def clip_to_simplex(p: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and rescale to sum 1 (uniform when nothing is left), row-wise: QuaPy's `clip`."""
    p = np.clip(p, 0.0, 1.0)
    s = p.sum(axis=-1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[-1])
    return np.where(s > 0, p / np.where(s > 0, s, 1.0), uniform)


def solve_rates(rates: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """p with rates @ p = observed, clipped to the simplex; Unsolvable when the rates are singular."""
    if np.linalg.cond(rates) > MAX_CONDITION:
        raise Unsolvable("the val confusion rates are singular")
    return clip_to_simplex(np.linalg.solve(rates, observed))


def cc(pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Classify and count: the share of each predicted class among the objects with a prediction."""
    pred = np.asarray(pred, np.int64)
    counts = np.bincount(pred[pred >= 0], minlength=n_classes)[:n_classes].astype(np.float64)
    if counts.sum() == 0:
        raise Unsolvable("no object with a prediction")
    return counts / counts.sum()


def acc(pred: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Adjusted count: CC solved through the val confusion rates, clipped to the simplex."""
    return solve_rates(rates, cc(pred, len(rates)))


def pcc(posteriors: np.ndarray) -> np.ndarray:
    """Probabilistic count: the mean posterior."""
    if len(posteriors) == 0:
        raise Unsolvable("no object with a posterior")
    return np.asarray(posteriors, np.float64).mean(axis=0)


def pacc(posteriors: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Probabilistic adjusted count: PCC solved through the val mean posteriors per true class."""
    return solve_rates(rates, pcc(posteriors))


def _smoothed_prior(prior: np.ndarray, epsilon: float) -> np.ndarray:
    ptr = np.array(prior, np.float64)
    if np.prod(ptr) == 0:
        ptr = (ptr + epsilon) / (ptr + epsilon).sum()
    return ptr


def emq(posteriors: np.ndarray, prior: np.ndarray, epsilon: float = EM_EPSILON) -> np.ndarray:
    """EM under prior shift (Saerens et al. 2002), as QuaPy's EMQ.EM: start at the training prior, reweigh the
    posteriors by q/prior, take their mean, until the mean change is below epsilon (after 10 steps)."""
    px = np.asarray(posteriors, np.float64)
    if len(px) == 0:
        raise Unsolvable("no object with a posterior")
    ptr = _smoothed_prior(prior, epsilon)
    qs, previous = ptr.copy(), None
    for step in range(EM_MAX_ITER):
        ps = (qs / ptr) * px
        ps /= ps.sum(axis=1, keepdims=True)
        qs = ps.mean(axis=0)
        if previous is not None and np.abs(qs - previous).mean() < epsilon and step > 10:
            break
        previous = qs
    return qs


def reason_unusable(method: str, cal: Calibration, have_scores: bool) -> str | None:
    """Why `method` cannot run with this calibration and input, or None."""
    if method not in METHODS:
        raise ValueError(f"unknown quantification method {method!r}; one of {', '.join(METHODS)}")
    if method in SOFT and not have_scores:
        return f"{NAMES[method]} needs the vote's class shares (none given)"
    if method in ADJUSTED and cal.missing:
        return f"{NAMES[method]} unsolvable: no val items of {', '.join(cal.missing)}"
    return None


def estimate(method: str, pred: np.ndarray, posteriors: np.ndarray | None, cal: Calibration) -> np.ndarray:
    """One method's class proportions over the known objects (pred >= 0); Unsolvable with the reason."""
    reason = reason_unusable(method, cal, posteriors is not None)
    if reason:
        raise Unsolvable(reason)
    if method == "cc":
        return cc(pred, cal.n_classes)
    if method == "acc":
        return acc(pred, cal.rates)
    assert posteriors is not None
    if method == "pcc":
        return pcc(posteriors)
    if method == "pacc":
        return pacc(posteriors, cal.soft_rates)
    return emq(posteriors, cal.prior)


def resolve(
    method: str, pred: np.ndarray, posteriors: np.ndarray | None, cal: Calibration
) -> tuple[str, np.ndarray, str]:
    """(method used, its estimate, note): `method` when it can run, else the next of the calibration's ranking
    (the val order), CC last; the note gives every reason a method was passed over ("" when none was)."""
    order = [method] + [m for m in cal.ranking if m != method] + ["cc"]
    reasons: list[str] = []
    for m in dict.fromkeys(order):
        try:
            return m, estimate(m, pred, posteriors, cal), _fallback_note(reasons, m)
        except Unsolvable as err:
            reasons.append(str(err))
    raise Unsolvable("; ".join(reasons))


def _fallback_note(reasons: list[str], used: str) -> str:
    return f"{'; '.join(reasons)}; fell back to {NAMES[used]}" if reasons else ""


# ---------------------------------------------------------------- bootstrap


def _resample_weights(rng: np.random.Generator, draws: int, n: int) -> np.ndarray:
    """(draws, n) multiplicities of a bootstrap resample of n objects, one row per draw."""
    if draws * n <= 1 << 21:  # small: one bincount over all draws
        idx = rng.integers(0, n, (draws, n)) + (np.arange(draws) * n)[:, None]
        return np.bincount(idx.ravel(), minlength=draws * n).reshape(draws, n).astype(np.float32)
    idx = rng.integers(0, n, (draws, n), dtype=np.int32 if n < 2**31 else np.int64)
    w = np.empty((draws, n), np.float32)
    for row, out in zip(idx, w):  # large: a bincount per draw keeps each in cache
        out[:] = np.bincount(row, minlength=n)
    return w


def _weight_chunks(seed: int, n_boot: int, n: int) -> Iterator[np.ndarray]:
    """The object weights of every draw, CHUNK draws at a time, from `seed`; small sets are kept, so that the
    methods run on one bag share them."""
    if n_boot * n <= SMALL_WEIGHTS:
        return iter(_kept_weight_chunks(seed, n_boot, n))
    rng = np.random.default_rng(seed)
    return (_resample_weights(rng, min(CHUNK, n_boot - lo), n) for lo in range(0, n_boot, CHUNK))


@lru_cache(maxsize=2)
def _kept_weight_chunks(seed: int, n_boot: int, n: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    chunks = tuple(_resample_weights(rng, min(CHUNK, n_boot - lo), n) for lo in range(0, n_boot, CHUNK))
    for w in chunks:
        w.setflags(write=False)  # shared between calls
    return chunks


def _crisp_rate_draws(rng: np.random.Generator, cal: Calibration, draws: int) -> np.ndarray:
    """(draws, C, C) confusion rates of val resampled within each true class (a multinomial per column)."""
    c = cal.n_classes
    out = np.zeros((draws, c, c))
    n = np.bincount(cal.labels[cal.pred >= 0], minlength=c)
    for j in np.flatnonzero(n):
        out[:, :, j] = rng.multinomial(n[j], cal.rates[:, j] / cal.rates[:, j].sum(), size=draws) / n[j]
    return out


def _soft_rate_draws(rng: np.random.Generator, cal: Calibration, draws: int) -> np.ndarray:
    """(draws, C, C) mean posteriors per true class of val resampled within each true class."""
    c = cal.n_classes
    out = np.zeros((draws, c, c))
    keep = cal.pred >= 0
    labels, post = cal.labels[keep], cal.posteriors[keep]
    for j in np.unique(labels):
        pj = post[labels == j]
        out[:, :, j] = _resample_weights(rng, draws, len(pj)) @ pj / len(pj)
    return out


def _solve_draws(rates: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Each draw's adjusted estimate (pseudo-inverse for a singular draw), clipped to the simplex."""
    try:
        p = np.linalg.solve(rates, observed[..., None])[..., 0]
    except np.linalg.LinAlgError:
        p = (np.linalg.pinv(rates) @ observed[..., None])[..., 0]
    return clip_to_simplex(p)


def _emq_draws(px: np.ndarray, w: np.ndarray, prior: np.ndarray, start: np.ndarray) -> np.ndarray:
    """EM of every draw at once, objects weighted by their multiplicity in the draw, from the point estimate."""
    ptr = _smoothed_prior(prior, EM_EPSILON).astype(np.float32)
    px = px.astype(np.float32)
    total = w.sum(axis=1, keepdims=True)
    q = np.broadcast_to(start.astype(np.float32), (len(w), len(start))).copy()
    active, wa = np.arange(len(w)), w
    for _ in range(EM_MAX_ITER):
        r = q[active] / ptr
        new = r * ((wa / np.maximum(r @ px.T, 1e-30)) @ px) / total[active]
        going = np.abs(new - q[active]).mean(axis=1) >= EM_TOLERANCE
        q[active] = new
        if not going.any():
            break
        if not going.all():  # converged draws stop: their rows leave the products
            active, wa = active[going], wa[going]
    return q.astype(np.float64)


def bootstrap_draws(
    method: str,
    pred: np.ndarray,
    posteriors: np.ndarray | None,
    known: np.ndarray,
    cal: Calibration,
    point: np.ndarray,
    n_boot: int,
    seed: int,
    val_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot, C) known-class proportions and (n_boot,) unknown shares: the sample's objects and val resampled
    together in each draw (val within each true class, from `val_seed`, default `seed`; the posterior calibration
    is held fixed)."""
    val_seed = seed if val_seed is None else val_seed
    rng = np.random.default_rng(seed)
    n, c = len(pred), cal.n_classes
    if method not in SOFT:
        cats = np.where(known, pred, c)
        counts = rng.multinomial(n, np.bincount(cats, minlength=c + 1) / n, size=n_boot).astype(np.float64)
        kn = counts[:, :c].sum(axis=1, keepdims=True)
        q = np.where(kn > 0, counts[:, :c] / np.maximum(kn, 1), 1.0 / c)
        p = _solve_draws(cal.rate_draws("acc", n_boot, val_seed), q) if method == "acc" else q
        return p, counts[:, c] / n
    assert posteriors is not None
    px = posteriors[known].astype(np.float32)
    rates = cal.rate_draws("pacc", n_boot, val_seed) if method == "pacc" else None
    props, unknown = np.empty((n_boot, c)), np.zeros(n_boot)
    for lo, w in zip(range(0, n_boot, CHUNK), _weight_chunks(seed, n_boot, n)):
        wk = w
        if not known.all():
            unknown[lo : lo + len(w)] = w[:, ~known].sum(axis=1) / n
            wk = w[:, known]
            wk[wk.sum(axis=1) == 0] = 1.0  # a draw with no known object: its known proportions are weighted by 0
        if method == "emq":
            props[lo : lo + len(w)] = _emq_draws(px, wk, cal.prior, point)
            continue
        q = wk @ px / wk.sum(axis=1, keepdims=True)
        props[lo : lo + len(w)] = q if rates is None else _solve_draws(rates[lo : lo + len(w)], q)
    return props, unknown


# ---------------------------------------------------------------- one sample


COMPOSITION_SCHEMA = pa.schema(
    [
        ("class", pa.string()),
        ("count", pa.int64()),
        ("proportion_cc", pa.float64()),
        ("proportion", pa.float64()),
        ("proportion_low", pa.float64()),
        ("proportion_high", pa.float64()),
        ("concentration_per_ml", pa.float64()),
        ("concentration_low", pa.float64()),
        ("concentration_high", pa.float64()),
        ("method", pa.string()),
        ("note", pa.string()),
    ]
)


@dataclass
class Composition:
    """A sample's point proportions and bootstrap draws over the known classes plus `unknown` (last column)."""

    counts: np.ndarray  # (C + 1,)
    point: np.ndarray | None  # (C + 1,), None for a sample without objects
    draws: np.ndarray | None  # (n_boot, C + 1)
    method: str
    note: str


def sample_composition(
    pred: np.ndarray,
    calibration: Calibration,
    scores: np.ndarray | None = None,
    *,
    unknown: np.ndarray | None = None,
    volume_ml: float | None = None,
    method: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pa.Table:
    """One sample's composition: a row per class of the calibration, then `unknown`.

    pred: (n,) predicted class index per object (-1 = no prediction, counted unknown); scores: (n, C) the
    weighted kNN vote's class shares (`vote_shares`), needed by PCC/PACC/EMQ; unknown: (n,) open-set flags;
    volume_ml: the volume analysed. Columns (COMPOSITION_SCHEMA): count, proportion_cc (count / objects),
    proportion (the method's, default the calibration's choice, over all objects with unknown its own row),
    proportion_low/high (a `level` percentile bootstrap interval, `n_boot` seeded draws), concentration_per_ml
    with concentration_low/high (null without a volume), method (the one used) and note (why another was
    passed over). A sample with no object gives count 0 and null proportions.
    """
    comp = composition(pred, calibration, scores, unknown=unknown, method=method, n_boot=n_boot, seed=seed)
    return composition_table(comp, calibration.classes, volume_ml, level, seed)


def encode_objects(
    cal: Calibration,
    predicted: list[str | None],
    unknown: list[bool] | np.ndarray,
    neighbour_classes: list[list[str]],
    neighbour_similarities: list[list[float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred, vote shares, unknown) for `sample_composition` from per-object class names, as classify's
    objects.parquet stores them (predicted, its unknown flag, the neighbours' classes and similarities; the first
    `cal.k` neighbours vote; one-hot shares of `predicted` for a calibration of an answer other than the LUT's).
    A class the calibration does not know counts as unknown (pred -1)."""
    index = {c: i for i, c in enumerate(cal.classes)}
    pred = np.array([index.get(p, -1) if p is not None else -1 for p in predicted], np.int64)
    n, k = len(pred), cal.k
    labels, sims = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf)
    for i, (names, values) in enumerate(zip(neighbour_classes, neighbour_similarities)):
        row = [(index.get(c, -1), v) for c, v in zip(names or [], values or [])][:k]
        if row:
            labels[i, : len(row)], sims[i, : len(row)] = zip(*row)
    shares = (
        one_hot(pred, cal.n_classes) if cal.vote.startswith(ANSWER_VOTE) else vote_shares(labels, sims, cal.n_classes)
    )
    return pred, shares, np.asarray(unknown, bool) | (pred < 0)


def composition(
    pred: np.ndarray,
    cal: Calibration,
    scores: np.ndarray | None = None,
    *,
    unknown: np.ndarray | None = None,
    method: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Composition:
    """The point proportions (over all objects, unknown last) and their bootstrap draws."""
    pred = np.asarray(pred, np.int64)
    n, c = len(pred), cal.n_classes
    if n and pred.max() >= c:
        raise ValueError(f"class index {pred.max()} outside the calibration's {c} classes: rerun lut to recalibrate")
    known = (pred >= 0) & ~(np.zeros(n, bool) if unknown is None else np.asarray(unknown, bool))
    counts = np.bincount(np.where(known, pred, c), minlength=c + 1)
    if n == 0:
        return Composition(counts, None, None, "", "no objects")
    if not known.any():
        point = np.r_[np.zeros(c), 1.0]
        return Composition(counts, point, np.tile(point, (n_boot, 1)), "", "every object is unknown")
    post = cal.calibrate(scores) if scores is not None else None
    with threadpool_limits(1 if n < BLAS_THREADS_FROM else None, "blas"):  # small products: one thread is faster
        used, p, note = resolve(method or cal.chosen, pred[known], None if post is None else post[known], cal)
        draws_p, draws_u = bootstrap_draws(used, pred, post, known, cal, p, n_boot, seed)
    share = known.mean()
    point = np.r_[share * p, 1.0 - share]
    draws = np.c_[(1.0 - draws_u)[:, None] * draws_p, draws_u]
    return Composition(counts, point, draws, used, note)


def composition_table(
    comp: Composition, classes: list[str], volume_ml: float | None, level: float = 0.95, seed: int = 0
) -> pa.Table:
    """COMPOSITION_SCHEMA rows from a Composition; concentrations carry the count's Poisson spread too."""
    names = list(classes) + [UNKNOWN]
    n = int(comp.counts.sum())
    empty = [None] * len(names)
    prop = low = high = conc = conc_low = conc_high = empty
    if comp.point is not None and comp.draws is not None:
        tail = 50.0 * (1.0 - level)
        prop = comp.point.tolist()
        low, high = (v.tolist() for v in np.percentile(comp.draws, [tail, 100.0 - tail], axis=0))
        if volume_ml is not None and volume_ml > 0:
            totals = np.random.default_rng(seed + 1).poisson(n, len(comp.draws))
            conc_draws = comp.draws * totals[:, None] / volume_ml
            conc = (comp.point * n / volume_ml).tolist()
            conc_low, conc_high = (v.tolist() for v in np.percentile(conc_draws, [tail, 100.0 - tail], axis=0))
    return pa.table(
        {
            "class": names,
            "count": comp.counts.astype(np.int64),
            "proportion_cc": (comp.counts / n).tolist() if n else empty,
            "proportion": prop,
            "proportion_low": low,
            "proportion_high": high,
            "concentration_per_ml": conc,
            "concentration_low": conc_low,
            "concentration_high": conc_high,
            "method": [comp.method] * len(classes) + ["count"],
            "note": [comp.note] * len(names),
        },
        schema=COMPOSITION_SCHEMA,
    )


# ---------------------------------------------------------------- the artificial-prevalence protocol


@dataclass
class Bag:
    """Indices into a pool (with repeats), the bag's true class proportions and the mix it was drawn at."""

    index: np.ndarray
    true: np.ndarray
    mix: np.ndarray


def uniform_simplex(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(size, n) points uniform over the simplex (Kraemer: sorted uniforms' gaps), as QuaPy's sampling."""
    u = np.sort(rng.random((size, n - 1)), axis=1)
    return np.diff(np.hstack([np.zeros((size, 1)), u, np.ones((size, 1))]), axis=1)


def draw_bags(
    labels: np.ndarray, n_classes: int, n_bags: int, seed: int, sizes: tuple[int, int] = BAG_SIZES
) -> list[Bag]:
    """Bags of sizes[0]–sizes[1] objects (uniform) at mixes uniform over the simplex of the classes the pool
    has, each class's objects drawn with replacement from the pool; seeded."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, np.int64)
    by_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    present = [c for c in range(n_classes) if len(by_class[c])]
    bags: list[Bag] = []
    for _ in range(n_bags if present else 0):
        size = int(rng.integers(sizes[0], sizes[1] + 1))
        mix = np.zeros(n_classes)
        mix[present] = uniform_simplex(rng, len(present), 1)[0]
        counts = rng.multinomial(size, mix)
        index = np.concatenate([rng.choice(by_class[c], counts[c]) for c in present])
        bags.append(Bag(index, counts / size, mix))
    return bags


@dataclass
class BagRun:
    """Every method's estimate (and interval) on every bag, with the bags' truth and sizes."""

    true: np.ndarray  # (B, C) the bags' own proportions
    mix: np.ndarray  # (B, C) the mixes they were drawn at (the population each bag samples)
    sizes: np.ndarray  # (B,)
    est: dict[str, np.ndarray]  # method -> (B, C)
    low: dict[str, np.ndarray] = field(default_factory=dict)
    high: dict[str, np.ndarray] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)


def run_bags(
    bags: list[Bag],
    pred: np.ndarray,
    scores: np.ndarray | None,
    cal: Calibration,
    methods: tuple[str, ...] = METHODS,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> BagRun:
    """Each method on each bag (falling back as `resolve` does); with n_boot, its interval too (the bag's
    objects and val resampled together, seed + bag number)."""
    post = cal.calibrate(scores) if scores is not None else None
    c, tail = cal.n_classes, 50.0 * (1.0 - level)
    stack = [np.array([getattr(b, a) for b in bags]).reshape(-1, c) for a in ("true", "mix")]
    run = BagRun(stack[0], stack[1], np.array([len(b.index) for b in bags]), {})
    for m in methods:
        run.est[m], run.fallbacks[m] = np.zeros((len(bags), c)), 0
        if n_boot:
            run.low[m], run.high[m] = np.zeros((len(bags), c)), np.zeros((len(bags), c))
    with threadpool_limits(1, "blas"):  # many small products: BLAS threads only wait on each other
        for b, bag in enumerate(bags):
            _run_bag(run, b, bag, pred, post, cal, methods, n_boot, seed, tail)
    return run


def _run_bag(
    run: BagRun,
    b: int,
    bag: Bag,
    pred: np.ndarray,
    post: np.ndarray | None,
    cal: Calibration,
    methods: tuple[str, ...],
    n_boot: int,
    seed: int,
    tail: float,
) -> None:
    """Bag b's estimates (and intervals) into `run`."""
    bp = np.asarray(pred)[bag.index]
    bpost = None if post is None else post[bag.index]
    known = bp >= 0
    for m in methods:
        used, p, _ = resolve(m, bp[known], None if bpost is None else bpost[known], cal)
        run.est[m][b], run.fallbacks[m] = p, run.fallbacks[m] + (used != m)
        if n_boot:
            draws, _ = bootstrap_draws(used, bp, bpost, known, cal, p, n_boot, seed + b, seed)
            run.low[m][b], run.high[m][b] = np.percentile(draws, [tail, 100.0 - tail], axis=0)


def join_runs(runs: list[BagRun]) -> BagRun:
    """Bag runs one after the other (the two folds of the val cross-fit)."""
    cat = np.concatenate
    return BagRun(
        cat([r.true for r in runs]),
        cat([r.mix for r in runs]),
        cat([r.sizes for r in runs]),
        {m: cat([r.est[m] for r in runs]) for m in runs[0].est},
        {m: cat([r.low[m] for r in runs]) for m in runs[0].low},
        {m: cat([r.high[m] for r in runs]) for m in runs[0].high},
        {m: sum(r.fallbacks[m] for r in runs) for m in runs[0].fallbacks},
    )


# ---------------------------------------------------------------- error measures


def smooth(p: np.ndarray, eps: np.ndarray | float) -> np.ndarray:
    """(p + eps) / (eps·C + 1), QuaPy's smoothing (eps = 1 / (2 · bag size))."""
    eps = np.asarray(eps, np.float64)[..., None] if np.ndim(eps) else eps
    return (p + eps) / (eps * p.shape[-1] + 1.0)


def bag_errors(true: np.ndarray, est: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Per bag: absolute error (mean over classes), relative absolute error and KL divergence(true ‖ est), the
    last two smoothed with eps = 1 / (2 · bag size), as QuaPy's ae, rae and kld."""
    eps = 1.0 / (2.0 * np.asarray(sizes, np.float64))
    st, se = smooth(true, eps), smooth(est, eps)
    return {
        "mae": np.abs(est - true).mean(axis=-1),
        "mrae": (np.abs(st - se) / st).mean(axis=-1),
        "kl": (st * np.log(st / se)).sum(axis=-1),
    }


def coverage(true: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per bag: the share of classes whose true proportion lies in [low, high]."""
    return ((true >= low - 1e-12) & (true <= high + 1e-12)).mean(axis=-1)


def mean_interval(values: np.ndarray, draws: int, seed: int, level: float = 0.95) -> tuple[float, list[float]]:
    """The mean over bags and its percentile bootstrap interval (bags resampled; seeded)."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return float("nan"), [float("nan"), float("nan")]
    w = _resample_weights(np.random.default_rng(seed), draws, len(values))
    means = w @ values / len(values)
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(values.mean()), [float(lo), float(hi)]


def summarize(run: BagRun, baseline: str = "cc", draws: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per method: MAE, MRAE and KL over the bags with 95% intervals, the paired difference to the baseline's
    (method − baseline, same bags), and how often it fell back. With intervals: `coverage`, how often they hold
    the mix the bag was drawn at (the population it samples, what a sample's interval is about), with its interval,
    and `coverage_of_bag`, how often they hold the bag's own proportions (no sampling error there); and
    `coverage_rare` / `coverage_common` for classes under / over RARE of the mix."""
    errors = {m: bag_errors(run.true, est, run.sizes) for m, est in run.est.items()}
    out: dict[str, dict[str, Any]] = {}
    for m, errs in errors.items():
        row: dict[str, Any] = {"method": NAMES[m], "bags": int(len(run.sizes)), "fallbacks": run.fallbacks.get(m, 0)}
        for name, values in errs.items():
            row[name], row[f"{name}_interval"] = mean_interval(values, draws, seed)
            if baseline in errors and m != baseline:
                diff, iv = mean_interval(values - errors[baseline][name], draws, seed)
                row[f"{name}_vs_{baseline}"], row[f"{name}_vs_{baseline}_interval"] = diff, iv
        if m in run.low:
            row["coverage"], row["coverage_interval"] = mean_interval(
                coverage(run.mix, run.low[m], run.high[m]), draws, seed
            )
            row["coverage_of_bag"] = float(coverage(run.true, run.low[m], run.high[m]).mean())
            held = (run.mix >= run.low[m] - 1e-12) & (run.mix <= run.high[m] + 1e-12)
            rare = run.mix < RARE
            row["coverage_rare"] = float(held[rare].mean()) if rare.any() else None
            row["coverage_common"] = float(held[~rare].mean()) if (~rare).any() else None
            row["interval_width"] = float((run.high[m] - run.low[m]).mean())
        out[m] = row
    return out


def rank_methods(summary: dict[str, dict[str, Any]], baseline: str = "cc") -> tuple[str, ...]:
    """The choice first, then the rest by mean absolute error (the fallback order). The choice: the lowest MAE
    among the methods shown better than the baseline (the upper end of their paired MAE difference's 95%
    interval below 0); the baseline when none is, so a correction must earn its place."""
    order = sorted(summary, key=lambda m: (round(summary[m]["mae"], 12), METHODS.index(m)))
    shown = [m for m in order if m == baseline or summary[m].get(f"mae_vs_{baseline}_interval", [0, 0])[1] < 0]
    chosen = shown[0] if shown else order[0]
    return (chosen, *[m for m in order if m != chosen])


def halves(labels: np.ndarray, seed: int) -> np.ndarray:
    """0/1 per item: two halves, each class split as evenly as it can be (seeded)."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx[1::2]] = 1
    return fold


def cross_fit(
    classes: list[str],
    labels: np.ndarray,
    pred: np.ndarray,
    scores: np.ndarray,
    prior: np.ndarray,
    n_bags: int,
    seed: int,
    methods: tuple[str, ...] = METHODS,
) -> BagRun:
    """The methods on bags of one half of val, calibrated on the other half, both ways round: an honest
    comparison on val alone (no item calibrates the estimate it is scored by)."""
    fold = halves(labels, seed)
    runs = []
    for f in (0, 1):
        fit, pool = fold != f, np.flatnonzero(fold == f)
        cal = make_calibration(classes, labels[fit], pred[fit], scores[fit], prior)
        bags = draw_bags(labels[pool], len(classes), (n_bags + 1 - f) // 2, seed + 7 * (f + 1))
        bags = [Bag(pool[b.index], b.true, b.mix) for b in bags]
        runs.append(run_bags(bags, pred, scores, cal, methods))
    return join_runs(runs)
