"""How well each score finds known label flips (stats --label-noise): precision@k, with k the number of flips, and
the AUROC of flipped vs clean, each with a seeded bootstrap interval; and each score's paired difference from the
baseline "the kNN vote disagrees with the given label".

The answer key is read here only, after every score has been computed (`plankton_core.audit.stage` passes the
scores in, never the key out).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BASELINE = "knn_disagrees"


def precision_at_k(score: np.ndarray, positive: np.ndarray, k: int) -> float:
    """The share of flips among the k highest scores; ties at the cut count at their expected share (as if broken
    at random), so a binary score is judged fairly."""
    if k <= 0 or not len(score):
        return float("nan")
    k = min(k, len(score))
    order = np.argsort(-score, kind="stable")
    cut = score[order[k - 1]]
    above = score > cut
    tied = score == cut
    taken_tied = k - int(above.sum())
    hits = float(positive[above].sum()) + taken_tied * float(positive[tied].mean())
    return hits / k


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """The probability a flipped item scores above a clean one (ties count half); nan without both kinds."""
    pos, neg = int(positive.sum()), int((~positive).sum())
    if not pos or not neg:
        return float("nan")
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # 1-based average rank of each tie block
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _interval(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def evaluate_scores(
    scores: dict[str, np.ndarray], positive: np.ndarray, draws: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Per score: precision@k and AUROC with 95% percentile bootstrap intervals (items resampled within flipped and
    within clean, so k stays the number of flips), and the paired difference from the baseline on the same draws."""
    positive = np.asarray(positive, bool)
    k = int(positive.sum())
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(positive), np.flatnonzero(~positive)
    draws_idx = [
        np.concatenate([rng.choice(pos_idx, len(pos_idx)), rng.choice(neg_idx, len(neg_idx))]) for _ in range(draws)
    ]
    boot: dict[str, dict[str, np.ndarray]] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, score in scores.items():
        score = np.asarray(score, np.float64)
        p_at_k = np.array([precision_at_k(score[d], positive[d], k) for d in draws_idx])
        roc = np.array([auroc(score[d], positive[d]) for d in draws_idx])
        boot[name] = {"precision_at_k": p_at_k, "auroc": roc}
        out[name] = {
            "precision_at_k": precision_at_k(score, positive, k),
            "precision_at_k_interval": _interval(p_at_k),
            "auroc": auroc(score, positive),
            "auroc_interval": _interval(roc),
        }
    if BASELINE in boot:
        for name in out:
            for metric in ("precision_at_k", "auroc"):
                diff = boot[name][metric] - boot[BASELINE][metric]
                out[name][f"{metric}_minus_baseline"] = out[name][metric] - out[BASELINE][metric]
                out[name][f"{metric}_minus_baseline_interval"] = _interval(diff)
    return out


def summary_line(result: dict[str, Any], name: str) -> str:
    """One line: a score's precision@k and AUROC with intervals, and its difference from the baseline."""
    r = result["scores"][name]
    lo, hi = r["precision_at_k_interval"]
    alo, ahi = r["auroc_interval"]
    line = (
        f"{name}: precision@{result['k']} {r['precision_at_k']:.3f} [{lo:.3f}, {hi:.3f}], "
        f"AUROC {r['auroc']:.3f} [{alo:.3f}, {ahi:.3f}]"
    )
    if name != BASELINE and "precision_at_k_minus_baseline" in r:
        dlo, dhi = r["precision_at_k_minus_baseline_interval"]
        line += f"; precision@k − baseline {r['precision_at_k_minus_baseline']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
    return line
