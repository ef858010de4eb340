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
from .select import RULES


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
class RuleBest:
    """The head epoch one selection rule keeps (the first epoch reaching the rule's best val score), folded weights."""

    epoch: int
    val_accuracy: float
    val_balanced_accuracy: float
    val_macro_f1: float
    weight: torch.Tensor
    bias: torch.Tensor

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "weight": self.weight.detach().cpu().float().contiguous(),
            "bias": self.bias.detach().cpu().float().contiguous(),
        }


@dataclass
class HeadResult:
    """The best head (folded to act on raw features) and how it did on val; `by_rule`: each rule's own choice."""

    weight: torch.Tensor  # (n_classes, feature_dim)
    bias: torch.Tensor  # (n_classes,)
    best_epoch: int  # 1-based head epoch that reached the best val accuracy (first one, on ties)
    val_acc: float
    val_macro_f1: float
    val_acc_per_epoch: list[float] = field(default_factory=list)
    by_rule: dict[str, RuleBest] = field(default_factory=dict)  # RULES → the head epoch each rule would keep
    val_per_epoch: list[dict[str, float]] = field(
        default_factory=list
    )  # accuracy, balanced_accuracy, macro_f1 per epoch

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "weight": self.weight.detach().cpu().float().contiguous(),
            "bias": self.bias.detach().cpu().float().contiguous(),
        }


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


def fold_standardizer(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """W((x - m)/s) + b  =  (W/s) x + (b - (W/s) m): one plain linear layer on raw features."""
    w = weight.double() / std.double()[None, :]
    b = bias.double() - w @ mean.double()
    return w.float(), b.float()


class LinearHeadTrainer:
    """One linear head: call `step` per batch of (standardised) features, `end_epoch` with val logits inputs."""

    def __init__(
        self, feature_dim: int, n_classes: int, steps_per_epoch: int, params: HeadParams, device: torch.device
    ):
        self.params = params
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            self.head = nn.Linear(feature_dim, n_classes).to(device)
        self.opt = torch.optim.SGD(
            self.head.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, params.epochs * steps_per_epoch))
        self.epoch = 0
        self.n_classes = n_classes
        self.history: list[float] = []
        self.val_history: list[dict[str, float]] = []
        # per selection rule: best score so far, its epoch, the head's weights then, and the val scores then
        self.best: dict[str, tuple[float, int, dict[str, torch.Tensor], dict[str, float]]] = {}

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
        """Score the head on val (accuracy, balanced accuracy, macro F1); each rule keeps it if it beats every
        earlier epoch."""
        self.epoch += 1
        self.head.eval()
        pred = self.head(val_x).argmax(dim=1)
        m = classification_metrics(val_y.cpu().numpy(), pred.cpu().numpy(), self.n_classes)
        scores = {r: float(m[r]) for r in RULES}
        self.history.append(scores["accuracy"])
        self.val_history.append(scores)
        state: dict[str, torch.Tensor] | None = None
        for rule in RULES:
            if rule not in self.best or scores[rule] > self.best[rule][0]:
                if state is None:
                    state = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
                self.best[rule] = (scores[rule], self.epoch, state, scores)
        return scores["accuracy"]

    def result(self, val_y: torch.Tensor, n_classes: int, mean: torch.Tensor, std: torch.Tensor) -> HeadResult:
        if not self.best:
            raise RuntimeError("result() before any end_epoch()")
        by_rule: dict[str, RuleBest] = {}
        for rule, (_, epoch, state, scores) in self.best.items():
            weight, bias = fold_standardizer(state["weight"].cpu(), state["bias"].cpu(), mean.cpu(), std.cpu())
            by_rule[rule] = RuleBest(
                epoch, scores["accuracy"], scores["balanced_accuracy"], scores["macro_f1"], weight, bias
            )
        acc = by_rule["accuracy"]
        return HeadResult(
            acc.weight,
            acc.bias,
            acc.epoch,
            acc.val_accuracy,
            acc.val_macro_f1,
            list(self.history),
            by_rule,
            list(self.val_history),
        )


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
        raise BadInputError(
            "the val split is empty: cannot choose a checkpoint without validation crops; "
            "rerun `plankton stats` with a val fraction"
        )
