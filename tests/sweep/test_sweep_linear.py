"""The linear head: training against a plain numpy SGD reference, standardisation folding, saving and loading."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from torch import nn

from plankton_core.errors import BadInputError
from plankton_core.heads import load_head, save_head
from plankton_core.store import LocalStore
from plankton_core.sweep.linear import HeadParams, fold_standardizer, standardizer, train_head_on_features

torch.set_num_threads(1)


def blobs(n_per_class, n_classes, dim, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    scales = rng.uniform(0.1, 20, dim)  # uneven scales and an offset, as raw features have
    x = np.concatenate([c + rng.normal(0, spread, (n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return (x * scales + 5).astype(np.float32), y


def reference_training(tx, ty, vx, vy, n_classes, p: HeadParams):
    """The same training written plainly: per-sample softmax-CE gradients, SGD momentum, closed-form cosine lr."""
    tx, vx = tx.astype(np.float64), vx.astype(np.float64)
    if p.standardize:
        m, s = tx.mean(0), tx.std(0)
        s = np.where(s > 1e-6 * (1 + np.abs(m)), s, 1.0)
    else:
        m, s = np.zeros(tx.shape[1]), np.ones(tx.shape[1])
    tz, vz = (tx - m) / s, (vx - m) / s
    torch.manual_seed(p.seed)
    init = nn.Linear(tx.shape[1], n_classes)
    w, b = init.weight.detach().double().numpy().copy(), init.bias.detach().double().numpy().copy()
    bw, bb = np.zeros_like(w), np.zeros_like(b)
    n = len(tz)
    per_epoch = math.ceil(n / p.batch_size)
    total = p.epochs * per_epoch
    gen = torch.Generator().manual_seed(p.seed)
    step, history, best = 0, [], (-1.0, 0, None)
    for epoch in range(1, p.epochs + 1):
        perm = torch.randperm(n, generator=gen).numpy()
        for start in range(0, n, p.batch_size):
            idx = perm[start : start + p.batch_size]
            gw, gb = np.zeros_like(w), np.zeros_like(b)
            for i in idx:
                logits = w @ tz[i] + b
                prob = np.exp(logits - logits.max())
                prob /= prob.sum()
                prob[ty[i]] -= 1.0
                gw += np.outer(prob, tz[i]) / len(idx)
                gb += prob / len(idx)
            gw += p.weight_decay * w
            gb += p.weight_decay * b
            lr = p.lr * (1 + math.cos(math.pi * step / total)) / 2
            bw, bb = p.momentum * bw + gw, p.momentum * bb + gb
            w, b = w - lr * bw, b - lr * bb
            step += 1
        acc = float(((vz @ w.T + b).argmax(1) == vy).mean())
        history.append(acc)
        if acc > best[0]:
            best = (acc, epoch, (w.copy(), b.copy()))
    bw_, bb_ = best[2]
    return history, best[1], bw_ / s[None, :], bb_ - (bw_ / s[None, :]) @ m


@pytest.mark.parametrize("standardize, weight_decay", [(True, 0.0), (False, 1e-3)])
def test_training_matches_a_plain_numpy_reference(standardize, weight_decay):
    tx, ty = blobs(20, 3, 6, seed=1, spread=2.5)
    vx, vy = blobs(10, 3, 6, seed=1, spread=2.5)
    p = HeadParams(
        epochs=4,
        batch_size=16,
        lr=0.05 if not standardize else 0.25,
        momentum=0.9,
        weight_decay=weight_decay,
        standardize=standardize,
        seed=3,
    )
    got = train_head_on_features(tx, ty, vx, vy, 3, p)
    history, best_epoch, w, b = reference_training(tx, ty, vx, vy, 3, p)
    assert got.val_acc_per_epoch == pytest.approx(history)
    assert got.best_epoch == best_epoch
    np.testing.assert_allclose(got.weight.numpy(), w, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got.bias.numpy(), b, rtol=2e-4, atol=2e-4)


def test_separable_features_reach_full_accuracy_and_saved_head_reproduces_it():
    tx, ty = blobs(40, 4, 12, seed=2, spread=0.5)
    vx, vy = blobs(15, 4, 12, seed=2, spread=0.5)
    got = train_head_on_features(tx, ty, vx, vy, 4, HeadParams(epochs=20, batch_size=32))
    assert got.val_acc == 1.0
    assert got.best_epoch == 1 + got.val_acc_per_epoch.index(1.0)
    state = got.state_dict()  # folded: acts on raw features, as evaluate applies it
    pred = torch.nn.functional.linear(torch.from_numpy(vx), state["weight"], state["bias"]).argmax(1).numpy()
    assert float((pred == vy).mean()) == got.val_acc
    assert got.val_macro_f1 == pytest.approx(f1_score(vy, pred, average="macro"))


def test_best_epoch_is_the_first_that_reached_the_best_accuracy():
    tx, ty = blobs(30, 3, 5, seed=4, spread=3.0)
    vx, vy = blobs(30, 3, 5, seed=5, spread=3.0)
    got = train_head_on_features(tx, ty, vx, vy, 3, HeadParams(epochs=15, batch_size=8, lr=0.5))
    assert got.val_acc == max(got.val_acc_per_epoch)
    assert got.best_epoch == 1 + got.val_acc_per_epoch.index(max(got.val_acc_per_epoch))


def test_standardizer_and_folding_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 5, (50, 4)).astype(np.float32)
    x[:, 2] = 7.0  # a constant (dead) dimension keeps std 1
    mean, std = standardizer(torch.from_numpy(x), True)
    np.testing.assert_allclose(mean.numpy(), x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(std.numpy()[[0, 1, 3]], x.astype(np.float64).std(0)[[0, 1, 3]], rtol=1e-5)
    assert std[2] == 1.0
    w, b = torch.randn(3, 4), torch.randn(3)
    fw, fb = fold_standardizer(w, b, mean, std)
    z = (torch.from_numpy(x) - mean) / std
    np.testing.assert_allclose((torch.from_numpy(x) @ fw.T + fb).numpy(), (z @ w.T + b).numpy(), rtol=1e-4, atol=1e-4)


def test_empty_splits_are_bad_input():
    x, y = blobs(5, 2, 3, seed=0)
    with pytest.raises(BadInputError, match="val split is empty"):
        train_head_on_features(x, y, x[:0], y[:0], 2, HeadParams(epochs=1))
    with pytest.raises(BadInputError, match="train split is empty"):
        train_head_on_features(x[:0], y[:0], x, y, 2, HeadParams(epochs=1))


def test_head_file_round_trip_with_weights_only(tmp_path):
    store = LocalStore(tmp_path)
    state = {"weight": torch.randn(3, 8), "bias": torch.randn(3)}
    save_head(store, "sweep/heads/epoch_0001.pt", state, {"classes": ["a", "b", "c"], "row": {"val_acc": 0.5}})
    raw = torch.load(io.BytesIO(store.read_bytes("sweep/heads/epoch_0001.pt")), weights_only=True)
    assert set(raw) == {"state_dict", "meta"}
    loaded, meta = load_head(store, "sweep/heads/epoch_0001.pt")
    assert torch.equal(loaded["weight"], state["weight"]) and meta["classes"] == ["a", "b", "c"]
    store.write_bytes("sweep/heads/bad.pt", b"not a torch file")
    with pytest.raises(BadInputError, match="linear head .*bad.pt is corrupt"):
        load_head(store, "sweep/heads/bad.pt")
