"""Retrieval's top-5 accuracy, like the classifier's, only with more than 5 classes (else 100% by construction)."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.lut.evaluation import predict_neighbours, score_predictions
from plankton_core.lut.retrieval import Neighbours
from plankton_core.lut.selection import headline_intervals
from plankton_core.scoring import wilson_interval


@pytest.mark.parametrize("n_classes", [3, 6])
def test_retrieval_top5_figure_and_interval_only_with_more_than_five_classes(n_classes):
    rng = np.random.default_rng(n_classes)
    gallery_labels = np.arange(4 * n_classes) % n_classes
    ids = rng.integers(0, len(gallery_labels), (60, 5))
    sims = np.sort(rng.random((60, 5)).astype(np.float32), axis=1)[:, ::-1].copy()
    y = np.arange(60) % n_classes
    p = predict_neighbours(Neighbours(ids, sims), gallery_labels, n_classes, "weighted", 5)
    m = score_predictions(y, p.pred, n_classes, p.ranked)
    iv = headline_intervals(y, p.pred, p.ranked, n_classes, 50, 0)["overall"]
    if n_classes <= 5:
        assert "top5_accuracy" not in m and "top5_accuracy" not in iv
        return
    hits = (gallery_labels[ids] == y[:, None]).any(axis=1)  # 5 neighbours: at most 5 classes found, all ranked
    assert m["top5_accuracy"] == pytest.approx(hits.mean()) and m["top5_accuracy"] < 1
    assert (iv["top5_accuracy"]["low"], iv["top5_accuracy"]["high"]) == wilson_interval(int(hits.sum()), 60)
