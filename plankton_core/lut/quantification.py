"""Which per-sample correction of class counts to use: chosen on val bags, reported on test bags.

Run inside the lut stage. Val and test are classified by the full index as a new sample would be (a query never
matches gallery items from its own source image): the LUT's vote (--vote) gives each item's class and the
weighted vote's class shares its posterior before calibration. The methods of plankton_core.quantify are
compared under the artificial-prevalence protocol: bags of 100–500 items at mixes uniform over the simplex.
The default method is the one with the lowest mean absolute error on val bags, each half of val calibrating
the bags drawn from the other (`quantify.cross_fit`); no test item takes part. Test bags then report every
method's MAE, MRAE and KL with 95% intervals, the paired difference to CC, and how often the per-bag
intervals hold the true proportion. Writes lut/quantification.json, lut/quantification.png and
lut/quantification_calibration.npz (what `quantify.load_calibration` reads for each sample).
"""

from __future__ import annotations

import io
import time
from typing import Any, NamedTuple

import numpy as np

from .. import artifacts as A
from .. import quantify as Q
from ..stage import StageContext
from ..tables import write_json
from .config import LutConfig
from .evaluation import QuerySet, neighbour_labels
from .retrieval import Searcher, search_excluding, vote


def classify_queries(
    cfg: LutConfig, index: Searcher, queries: QuerySet, g_labels: np.ndarray, g_groups: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's class by the LUT's vote and the weighted vote's class shares, own source image left out."""
    nb = search_excluding(index, queries.x, cfg.k, g_groups, queries.groups)
    labels, sims = neighbour_labels(nb, g_labels)[:, : cfg.k], nb.sims[:, : cfg.k]
    pred = vote(labels, sims, n_classes, cfg.vote)[0]
    return pred, Q.vote_shares(labels, sims, n_classes)


class AnswerPredictions(NamedTuple):
    """What the calibration is made on when val chose an answer other than the LUT's vote."""

    vote: str  # the calibration's vote: "answer:<name>"
    val: tuple[np.ndarray, np.ndarray]  # (pred, shares)
    test: tuple[np.ndarray, np.ndarray] | None


def answer_predictions(
    answered: Any, val_rows: np.ndarray, test_rows: np.ndarray, n_classes: int
) -> AnswerPredictions | None:
    """The answer val chose (lut.answer.Answered) when it is not the plain LUT and covers exactly these val and
    test rows; None otherwise (the LUT's vote). Its shares are one-hot: classify keeps each object's answer, not its
    class probabilities, so PCC equals CC and PACC equals ACC for such an answer."""
    if answered is None or answered.name == "lut" or not np.array_equal(answered.val_rows, val_rows):
        return None
    if len(test_rows) and not np.array_equal(answered.test_rows, test_rows):
        return None
    test = None
    if answered.test_pred is not None and len(test_rows):
        test = (answered.test_pred, Q.one_hot(answered.test_pred, n_classes))
    val = (answered.val_pred, Q.one_hot(answered.val_pred, n_classes))
    return AnswerPredictions(f"{Q.ANSWER_VOTE}{answered.name}", val, test)


def quantification_step(
    cfg: LutConfig,
    ctx: StageContext,
    index: Searcher,
    val: QuerySet,
    test: QuerySet,
    g_labels: np.ndarray,
    g_groups: np.ndarray,
    classes: list[str],
    answer: AnswerPredictions | None = None,
) -> dict[str, Any]:
    """Choose the method on val, store the calibration, report on test; the counts run.json records. `answer`:
    `answer_predictions`' result when val chose an answer other than the LUT's vote (calibrated on it instead)."""
    root = ctx.root
    if not (cfg.quantify_bags and len(val) and len(g_labels)):
        for key in (A.LUT_QUANTIFICATION, A.LUT_QUANT_PLOT, A.LUT_QUANT_CALIBRATION):
            root.delete(key)
        if cfg.quantify_bags:
            ctx.notes.append("no val split (or an empty gallery): quantification not calibrated")
        return {}
    t0, n = time.perf_counter(), len(classes)
    vote_name, k = (answer.vote, 1) if answer else (cfg.vote, cfg.k)
    pred, shares = answer.val if answer else classify_queries(cfg, index, val, g_labels, g_groups, n)
    prior = np.bincount(g_labels, minlength=n) / len(g_labels)
    val_run = Q.cross_fit(classes, val.labels, pred, shares, prior, cfg.quantify_bags, cfg.seed)
    val_summary = Q.summarize(val_run, draws=cfg.bootstrap, seed=cfg.seed)
    ranking = Q.rank_methods(val_summary)
    cal = Q.make_calibration(
        classes, val.labels, pred, shares, prior, vote=vote_name, k=k, chosen=ranking[0], ranking=ranking
    )
    cal.extra = {"index": "full", "val_items": int(len(val))}
    root.write_bytes(A.LUT_QUANT_CALIBRATION, Q.calibration_bytes(cal))
    report = _report_head(cfg, cal, val_summary)
    if len(test):
        test_pred, test_shares = (
            answer.test if answer and answer.test else classify_queries(cfg, index, test, g_labels, g_groups, n)
        )
        bags = Q.draw_bags(test.labels, n, cfg.quantify_bags, cfg.seed + 1)
        run = Q.run_bags(bags, test_pred, test_shares, cal, Q.METHODS, n_boot=cfg.quantify_draws, seed=cfg.seed)
        report["test"] = Q.summarize(run, draws=cfg.bootstrap, seed=cfg.seed)
        report["verdict"] = verdict(cal.chosen, report["test"])
        root.write_bytes(A.LUT_QUANT_PLOT, plot_bags(run, report["test"], cal.chosen))
    else:
        root.delete(A.LUT_QUANT_PLOT)
        report["verdict"] = f"{Q.NAMES[cal.chosen]} chosen on val; no test split to report on"
    report["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(root, A.LUT_QUANTIFICATION, report)
    ctx.notes.append(f"quantification: {report['verdict']} → {root.uri}/{A.LUT_QUANTIFICATION}")
    counts: dict[str, Any] = {"quantification_method": cal.chosen}
    if "test" in report:
        counts["quantification_test_mae"] = round(report["test"][cal.chosen]["mae"], 6)
    return counts


def _report_head(cfg: LutConfig, cal: Q.Calibration, val_summary: dict[str, Any]) -> dict[str, Any]:
    """quantification.json's first part: the protocol, the choice and its val figures, the calibration."""
    return {
        "protocol": {
            "name": "artificial prevalence (mixes uniform over the simplex, as QuaPy's APP/UPP)",
            "bags": cfg.quantify_bags,
            "bag_size": list(Q.BAG_SIZES),
            "interval_draws": cfg.quantify_draws,
            "level": 0.95,
            "seed": cfg.seed,
            "intervals_of_means": f"bags resampled, {cfg.bootstrap} draws",
        },
        "methods": [Q.NAMES[m] for m in Q.METHODS],
        "chosen": cal.chosen,
        "chosen_by": "lowest mean absolute error on val bags (each half of val calibrating the other's bags) among "
        "the methods whose paired MAE difference to CC has its 95% interval below 0; else CC",
        "ranking": list(cal.ranking),
        "val": val_summary,
        "calibration": {
            "key": A.LUT_QUANT_CALIBRATION,
            "vote": cal.vote,
            "k": cal.k,
            "index": "full",
            "posterior": f"p ∝ (share + {cal.smoothing:.4g})^{cal.power:.4g}, fitted on val",
            "val_items": int(len(cal.labels)),
            "classes_without_val_items": cal.missing,
        },
        "classes": cal.classes,
    }


def verdict(chosen: str, test: dict[str, dict[str, Any]]) -> str:
    """One line: is the chosen method's test MAE lower than CC's (paired, 95% interval)?"""
    name, row = Q.NAMES[chosen], test[chosen]
    head = f"{name} chosen on val; test MAE {row['mae']:.4f} vs CC {test['cc']['mae']:.4f}"
    if chosen == "cc":
        return f"{head}: no correction was shown better than CC on val, so CC is the default"
    lo, hi = row["mae_vs_cc_interval"]
    diff = f"paired difference {row['mae_vs_cc']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    if hi < 0:
        return f"{head}: lower than CC's ({diff})"
    if row["mae_vs_cc"] < 0:
        return f"{head}: not clearly lower than CC's ({diff} includes 0)"
    return f"{head}: NOT lower than CC's ({diff})"


def plot_bags(run: Q.BagRun, test: dict[str, dict[str, Any]], chosen: str) -> bytes:
    """PNG: estimated against true class proportion on the test bags, one panel per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(run.est)
    fig, axes = plt.subplots(1, len(methods), figsize=(2.6 * len(methods), 2.9), dpi=100, sharey=True)
    for ax, m in zip(np.atleast_1d(axes), methods):
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8)
        ax.scatter(
            run.true.ravel(), run.est[m].ravel(), s=4, alpha=0.35, color="tab:red" if m == chosen else "tab:blue"
        )
        ax.set_title(f"{Q.NAMES[m]}{' (chosen)' if m == chosen else ''}\nMAE {test[m]['mae']:.4f}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("true proportion", fontsize=8)
        ax.tick_params(labelsize=7)
    np.atleast_1d(axes)[0].set_ylabel("estimated proportion", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
