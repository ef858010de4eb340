"""The answer query and classify give, chosen on val: the plain LUT, the LUT with size and shape, a softmax head on
the embedding (with or without the features), or head and LUT together.

Candidates, in this order (a later one replaces an earlier one only when strictly better on val by --select-by):
- `lut`: today's answer, the nearest gallery item's class (w = 0, k = 1);
- `lut+`: the LUT's best (w, k) of the morphometric grid (plankton_core.lut.morpho), when it is not the plain one;
- `head`: a softmax regression (openset.fit_head) on the normalised train embeddings;
- `head+`: the same on [embedding ; w · features], w the grid's best on val, when there are features;
- `head+lut`: the mean of the best head's probabilities and the best LUT's vote shares.
Heads are fitted on train (at most HEAD_TRAIN_CAP items, a seeded draw), LUT votes on val query train (own source
left out), so val chooses without having trained anything. Test then scores every candidate on the same items
(the LUT ones against the served gallery), each with its interval, the chosen one against the plain LUT and, when
the baseline stage ran, against the boosted trees on the same test items (paired difference and McNemar's p).

Written: lut/answer.json (the val table, the choice, the test figures), lut/answer.npz (the features' train mean
and std, the chosen head), lut/index_features.faiss (the gallery on [embedding ; w · features], row-aligned with
gallery.parquet) when the choice searches it; index.json's `answer` says which and how (plankton_core.inference
serves it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import artifacts as A
from .. import versus_baseline
from ..openset import LinearHead, fit_head, softmax
from ..scoring import mcnemar, metric_intervals, paired_difference, verdict
from ..stage import StageContext
from ..tables import write_json
from .config import LutConfig
from .index import build_index, save_index, search_params, set_search_params
from .morpho import LOGGED, Prepared, scores

HEAD_TRAIN_CAP = 50_000
NAMES = ("lut", "lut+", "head", "head+", "head+lut")


@dataclass
class Fitted:
    """What val chose within each family: the LUT's (w, k), each head weight's fit, and the heads' best w."""

    lut: tuple[float, int]
    heads: dict[float, LinearHead]
    head_w: float


def _best(table: dict[Any, float]) -> Any:
    """The first key with the highest value (ties keep the earlier, simpler setting)."""
    best = next(iter(table))
    for key, value in table.items():
        if value > table[best]:
            best = key
    return best


def _fit_heads(cfg: LutConfig, prep: Prepared, n_classes: int) -> dict[float, LinearHead]:
    """A softmax head per weight of the grid, on (at most HEAD_TRAIN_CAP of) train."""
    train = prep.train
    if len(train) > HEAD_TRAIN_CAP:
        train = np.sort(np.random.default_rng(cfg.seed).choice(train, HEAD_TRAIN_CAP, replace=False))
    y = prep.space.labels[train]
    return {w: fit_head(prep.space.x(train, w), y, n_classes) for w in prep.grid}


@dataclass
class Answered:
    """The chosen answer's predictions of val and test (prep.val's and prep.test's rows), for quantification."""

    name: str
    val_rows: np.ndarray
    val_pred: np.ndarray
    test_rows: np.ndarray
    test_pred: np.ndarray | None


def _val_options(
    cfg: LutConfig, prep: Prepared, n_classes: int
) -> tuple[Fitted, dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Every candidate's val scores and predictions, and what each family chose."""
    y = prep.space.labels[prep.val]
    metric = cfg.select_by
    lut_best = _best({key: scores(y, pred, n_classes)[metric] for key, (pred, _) in prep.lut_val.items()})
    heads = _fit_heads(cfg, prep, n_classes)
    head_probs = {w: softmax(h.logits(prep.space.x(prep.val, w))) for w, h in heads.items()}
    head_w = _best({w: scores(y, p.argmax(axis=1), n_classes)[metric] for w, p in head_probs.items()})
    fitted = Fitted(lut_best, heads, head_w)
    preds = {
        "lut": prep.lut_val[(0.0, 1)][0],
        "lut+": prep.lut_val[lut_best][0],
        "head": head_probs[0.0].argmax(axis=1),
        "head+": head_probs[head_w].argmax(axis=1),
        "head+lut": (0.5 * head_probs[head_w] + 0.5 * prep.lut_val[lut_best][1]).argmax(axis=1),
    }
    table = {name: {**describe(name, fitted), **scores(y, preds[name], n_classes)} for name in present(fitted)}
    return fitted, table, preds


def present(fitted: Fitted) -> list[str]:
    """The candidates that differ from the earlier ones: `lut+` only when the grid chose more than the plain LUT,
    `head+` only when a head with features won its family."""
    return [
        n for n in NAMES if not (n == "lut+" and fitted.lut == (0.0, 1)) and not (n == "head+" and fitted.head_w == 0)
    ]


def describe(name: str, fitted: Fitted) -> dict[str, Any]:
    """The candidate's settings: the LUT's weight and k, the head's weight (None where the part is not used)."""
    lut = {"lut": (0.0, 1), "lut+": fitted.lut, "head+lut": fitted.lut}.get(name)
    head = {"head": 0.0, "head+": fitted.head_w, "head+lut": fitted.head_w}.get(name)
    return {
        "name": name,
        "lut": {"weight": lut[0], "k": lut[1]} if lut else None,
        "head": {"weight": head} if head is not None else None,
    }


def _test_predictions(prep: Prepared, fitted: Fitted, n_classes: int, names: list[str]) -> dict[str, np.ndarray]:
    """Every candidate's test predictions: the LUT parts against the served gallery's known items."""
    space, test, gallery = prep.space, prep.test, prep.gallery
    luts = {(w, k): out for w in {0.0, fitted.lut[0]} for k, out in space.predict(test, gallery, w, n_classes).items()}
    probs = {w: softmax(fitted.heads[w].logits(space.x(test, w))) for w in {0.0, fitted.head_w}}
    out = {
        "lut": luts[(0.0, 1)][0],
        "lut+": luts[fitted.lut][0],
        "head": probs[0.0].argmax(axis=1),
        "head+": probs[fitted.head_w].argmax(axis=1),
        "head+lut": (0.5 * probs[fitted.head_w] + 0.5 * luts[fitted.lut][1]).argmax(axis=1),
    }
    return {name: out[name] for name in names}


METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _test(
    cfg: LutConfig,
    ctx: StageContext,
    prep: Prepared,
    preds: dict[str, np.ndarray],
    fitted: Fitted,
    chosen: str,
    classes: list[str],
) -> dict[str, Any]:
    """Every candidate on test with its intervals; the chosen one against the plain LUT and against the baseline."""
    n_classes = len(classes)
    y = prep.space.labels[prep.test]
    names = list(preds)
    rows = []
    for name in names:
        overall = metric_intervals(y, preds[name], n_classes, reps=cfg.bootstrap, seed=cfg.seed)["overall"]
        rows.append(
            {
                **describe(name, fitted),
                **scores(y, preds[name], n_classes),
                "intervals": {m: [overall[m]["low"], overall[m]["high"]] for m in METRICS if m in overall},
            }
        )
    plain = mcnemar(preds[chosen] == y, preds["lut"] == y)
    diff = paired_difference(y, preds[chosen], preds["lut"], n_classes, cfg.bootstrap, cfg.seed, names=METRICS)
    keys = [str(k) for k in prep.crop_keys[prep.test]]
    against = versus_baseline.compare(ctx.root, keys, y, preds[chosen], classes, cfg.bootstrap, cfg.seed)
    return {
        "n": int(len(y)),
        "rows": rows,
        "versus_plain_lut": {
            "difference": diff,
            "mcnemar": plain,
            "verdict": verdict(plain["p"], diff["accuracy"]["diff"]),
        },
        "baseline": against,
    }


def answer_step(
    cfg: LutConfig, ctx: StageContext, prep: Prepared | None, classes: list[str], gallery_rows: np.ndarray, plain: Any
) -> tuple[dict[str, Any] | None, Answered | None]:
    """Choose the answer on val, score every candidate on test (lut/answer.json), write what serving needs; the
    record for index.json's `answer` and the chosen one's predictions ((None, None) without train and val: query
    and classify keep the plain LUT). `gallery_rows`: the served gallery's rows of the splits table; `plain`: the
    full index (its type and search parameters carry over to the index on [embedding ; w · features])."""
    if prep is None:
        return None, None
    fitted, val_table, val_preds = _val_options(cfg, prep, len(classes))
    names = list(val_table)
    chosen = _best({name: val_table[name][cfg.select_by] for name in names})
    out: dict[str, Any] = {
        "select_by": cfg.select_by,
        "val": [val_table[name] for name in names],
        "chosen": describe(chosen, fitted),
        "features": prep.names,
        "counts": {"train": len(prep.train), "val": len(prep.val), "test": len(prep.test)},
    }
    test_preds = _test_predictions(prep, fitted, len(classes), names) if len(prep.test) else None
    if test_preds is not None:
        out["test"] = _test(cfg, ctx, prep, test_preds, fitted, chosen, classes)
    record = _serve(cfg, ctx, prep, fitted, chosen, gallery_rows, plain)
    write_json(ctx.root, A.LUT_ANSWER, out)
    ctx.notes.append(note(out))
    chosen_test = test_preds[chosen] if test_preds is not None else None
    return record, Answered(chosen, prep.val, val_preds[chosen], prep.test, chosen_test)


def _serve(
    cfg: LutConfig,
    ctx: StageContext,
    prep: Prepared,
    fitted: Fitted,
    chosen: str,
    gallery_rows: np.ndarray,
    plain: Any,
) -> dict[str, Any]:
    """lut/answer.npz (and lut/index_features.faiss when the chosen LUT part uses the features); index.json's
    `answer`."""
    setting = describe(chosen, fitted)
    arrays: dict[str, Any] = {"mean": np.asarray(prep.mean, np.float64), "std": np.asarray(prep.std, np.float64)}
    if setting["head"] is not None:
        head = fitted.heads[setting["head"]["weight"]]
        arrays.update(head_weight=head.weight, head_bias=head.bias)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    ctx.root.write_bytes(A.LUT_ANSWER_ARRAYS, buf.getvalue())
    files: dict[str, str] = {"arrays": A.LUT_ANSWER_ARRAYS}
    lut = setting["lut"]
    if lut is not None and lut["weight"] > 0:
        x = prep.space.x(gallery_rows, lut["weight"])
        index = build_index(
            x, cfg.index, nlist=cfg.ivf_nlist or None, hnsw_m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction
        )
        set_search_params(index, search_params(plain))
        save_index(ctx.root, A.LUT_INDEX_FEATURES, index)
        files["index"] = A.LUT_INDEX_FEATURES
    elif ctx.root.exists(A.LUT_INDEX_FEATURES):
        ctx.root.delete(A.LUT_INDEX_FEATURES)  # an earlier run's: not what this answer searches
    return {
        **setting,
        "features": prep.names,
        "logged": sorted(LOGGED) if prep.has_features else [],
        "keep_scale_size": prep.keep_scale_size,
        "files": files,
        "search_params": search_params(plain),
        "variant": "full",
    }


def note(out: dict[str, Any]) -> str:
    """The run's one line about the answer: what val chose and how it did on test."""
    name = out["chosen"]["name"]
    line = f"answer: val chose {name} ({LABELS[name]})"
    test = out.get("test")
    if not test:
        return line + "; no test items to score it on"
    acc = {row["name"]: row["accuracy"] for row in test["rows"]}
    line += f"; test accuracy {100 * acc[name]:.1f}% vs {100 * acc['lut']:.1f}% plain LUT"
    cmp = test.get("baseline")
    if cmp and "paired" in cmp:
        line += f", {100 * cmp['paired']['accuracy']['b']:.1f}% baseline ({cmp['verdict']})"
    return line


LABELS = {
    "lut": "the nearest gallery item",
    "lut+": "the LUT at the best feature weight and k of val's grid",
    "head": "a softmax head on the embedding",
    "head+": "a softmax head on embedding and morphometric features",
    "head+lut": "the mean of the head's and the LUT's votes",
}
