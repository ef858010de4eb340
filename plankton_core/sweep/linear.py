"""The linear classifier on frozen features: training and the best-epoch record (the saved file: `plankton_core.heads`).

Both head modes share `LinearHeadTrainer`: SGD with momentum and a per-step
cosine schedule, validation accuracy after every head epoch, the weights of the
best epoch kept. Features are z-scored with the train mean/std (optional); the
scaling is folded into the saved `nn.Linear`, so downstream code applies the
head to raw backbone features and never needs the statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInputError
from ..scoring import classification_metrics


@dataclass
class HeadParams:
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.25
    momentum: float = 0.9
    weight_decay: float = 0.0
    standardize: bool = True
    seed: int = 0


@dataclass
class HeadResult:
    """The best head (folded to act on raw features) and how it did on val."""

    weight: torch.Tensor  # (n_classes, feature_dim)
    bias: torch.Tensor  # (n_classes,)
    best_epoch: int  # 1-based head epoch that reached the best val accuracy (first one, on ties)
    val_acc: float
    val_macro_f1: float
    val_acc_per_epoch: list[float] = field(default_factory=list)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.detach().cpu().float().contiguous(), "bias": self.bias.detach().cpu().float().contiguous()}


def standardizer(train_features: torch.Tensor, enabled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the train features; constant dimensions keep std 1 (no division by zero)."""
    dim = train_features.shape[1]
    if not enabled:
        return torch.zeros(dim, device=train_features.device), torch.ones(dim, device=train_features.device)
    x = train_features.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-6 * (1 + mean.abs()), std, torch.ones_like(std))
    return mean.float(), std.float()


def fold_standardizer(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W((x - m)/s) + b  =  (W/s) x + (b - (W/s) m): one plain linear layer on raw features."""
    w = weight.double() / std.double()[None, :]
    b = bias.double() - w @ mean.double()
    return w.float(), b.float()


class LinearHeadTrainer:
    """One linear head: call `step` per batch of (standardised) features, `end_epoch` with val logits inputs."""

    def __init__(self, feature_dim: int, n_classes: int, steps_per_epoch: int, params: HeadParams, device: torch.device):
        self.params = params
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            self.head = nn.Linear(feature_dim, n_classes).to(device)
        self.opt = torch.optim.SGD(self.head.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, params.epochs * steps_per_epoch))
        self.epoch = 0
        self.best_acc = -1.0
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] = {}
        self.best_pred: torch.Tensor | None = None
        self.history: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.head.train()
        loss = F.cross_entropy(self.head(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return float(loss.detach())

    @torch.no_grad()
    def end_epoch(self, val_x: torch.Tensor, val_y: torch.Tensor) -> float:
        """Score the head on val; keep it if it beats every earlier epoch."""
        self.epoch += 1
        self.head.eval()
        pred = self.head(val_x).argmax(dim=1)
        acc = float((pred == val_y).float().mean())
        self.history.append(acc)
        if acc > self.best_acc:
            self.best_acc, self.best_epoch = acc, self.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
            self.best_pred = pred.cpu()
        return acc

    def result(self, val_y: torch.Tensor, n_classes: int, mean: torch.Tensor, std: torch.Tensor) -> HeadResult:
        if self.best_pred is None:
            raise RuntimeError("result() before any end_epoch()")
        weight, bias = fold_standardizer(self.best_state["weight"].cpu(), self.best_state["bias"].cpu(), mean.cpu(), std.cpu())
        f1 = classification_metrics(val_y.cpu().numpy(), self.best_pred.numpy(), n_classes)["macro_f1"]
        return HeadResult(weight, bias, self.best_epoch, self.best_acc, float(f1), list(self.history))


def train_head_on_features(
    train_x: np.ndarray | torch.Tensor,
    train_y: np.ndarray | torch.Tensor,
    val_x: np.ndarray | torch.Tensor,
    val_y: np.ndarray | torch.Tensor,
    n_classes: int,
    params: HeadParams,
    device: torch.device | str = "cpu",
) -> HeadResult:
    """Train a linear head on cached features, all in torch: one epoch is a permutation and a few matmuls."""
    device = torch.device(device)
    tx, vx = _tensor(train_x, np.float32, device), _tensor(val_x, np.float32, device)
    ty, vy = _tensor(train_y, np.int64, device), _tensor(val_y, np.int64, device)
    check_sizes(len(tx), len(vx))
    mean, std = standardizer(tx, params.standardize)
    tx = (tx - mean) / std
    vx = (vx - mean) / std
    n = len(tx)
    steps = math.ceil(n / params.batch_size)
    trainer = LinearHeadTrainer(tx.shape[1], n_classes, steps, params, device)
    gen = torch.Generator().manual_seed(params.seed)
    for _ in range(params.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, params.batch_size):
            idx = perm[start : start + params.batch_size]
            trainer.step(tx[idx], ty[idx])
        trainer.end_epoch(vx, vy)
    return trainer.result(vy, n_classes, mean, std)


def _tensor(x: np.ndarray | torch.Tensor, dtype: type, device: torch.device) -> torch.Tensor:
    """A tensor on `device`, sharing memory with a writable array of the right dtype (copying otherwise)."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    arr: np.ndarray = np.asarray(x, dtype=dtype)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).to(device)


def check_sizes(n_train: int, n_val: int) -> None:
    if n_train == 0:
        raise BadInputError("the train split is empty: nothing to train a linear head on; check stats/splits.parquet")
    if n_val == 0:
        raise BadInputError("the val split is empty: cannot choose a checkpoint without validation crops; rerun `plankton stats` with a val fraction")
