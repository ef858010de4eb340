"""--checkpoints parsing, the documented selection rule and each --select-by rule's choice of head epoch and
checkpoint."""

from __future__ import annotations

import pytest
import torch

from plankton_core.errors import BadInputError
from plankton_core.sweep.linear import HeadParams, LinearHeadTrainer
from plankton_core.sweep.select import choices_by_rule, choose_best, parse_checkpoint_spec

AVAILABLE = [("epoch_0600", 600), ("epoch_0700", 700), ("epoch_0800", 800), ("epoch_0900", 900), ("last", None)]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", ["epoch_0600", "epoch_0700", "epoch_0800", "epoch_0900", "last"]),
        ("700:", ["epoch_0700", "epoch_0800", "epoch_0900", "last"]),
        ("700:800", ["epoch_0700", "epoch_0800"]),
        (":700", ["epoch_0600", "epoch_0700"]),
        ("800,700,last", ["epoch_0700", "epoch_0800", "last"]),
        ("epoch_0900, 600", ["epoch_0600", "epoch_0900"]),
        ("600:700,last", ["epoch_0600", "epoch_0700", "last"]),
    ],
)
def test_spec_selects(spec, expected):
    assert parse_checkpoint_spec(spec, AVAILABLE) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("999", "no checkpoint for epoch 999"),
        ("1000:1100", "no checkpoint in that range"),
        ("seven", "cannot read 'seven'"),
        (",", "selects nothing"),
    ],
)
def test_bad_specs_are_named(spec, message):
    with pytest.raises(BadInputError, match=message):
        parse_checkpoint_spec(spec, AVAILABLE)


def test_no_checkpoints_at_all():
    with pytest.raises(BadInputError, match="no checkpoints under supcon/ckpt"):
        parse_checkpoint_spec("all", [])


def row(name, epoch, acc, f1):
    return {"checkpoint": name, "epoch": epoch, "val_acc": acc, "val_macro_f1": f1}


def test_rule_highest_accuracy_first():
    assert (
        choose_best([row("epoch_0700", 700, 0.90, 0.99), row("epoch_0800", 800, 0.91, 0.50)])["checkpoint"]
        == "epoch_0800"
    )


def test_rule_ties_go_to_macro_f1_then_later_epoch_then_numbered_over_last():
    rows = [
        row("epoch_0700", 700, 0.9, 0.80),
        row("epoch_0800", 800, 0.9, 0.85),
        row("epoch_0900", 900, 0.9, 0.85),
        row("last", 900, 0.9, 0.85),
    ]
    assert choose_best(rows)["checkpoint"] == "epoch_0900"
    assert choose_best(rows[:2])["checkpoint"] == "epoch_0800"
    assert choose_best([row("last", 900, 0.9, 0.85), row("epoch_0800", 800, 0.9, 0.85)])["checkpoint"] == "last"


# --- --select-by: each rule's head epoch and checkpoint ---------------------------------------------------------------


def rule_row(name, epoch, **by):
    """A sweep row with per-rule val scores: by={rule: (acc, bal, f1)}."""
    out = {
        "checkpoint": name,
        "epoch": epoch,
        "checkpoint_key": f"supcon/ckpt/{name}.pt",
        "head_key": f"sweep/heads/{name}.pt",
        "best_head_epoch": 1,
    }
    for rule, (acc, bal, f1) in by.items():
        out |= {
            f"by_{rule}_val_accuracy": acc,
            f"by_{rule}_val_balanced_accuracy": bal,
            f"by_{rule}_val_macro_f1": f1,
            f"by_{rule}_head_epoch": 3,
            f"by_{rule}_head_key": f"sweep/heads/{name}.{rule}.pt",
        }
    out["val_acc"], out["val_macro_f1"] = by["accuracy"][0], by["accuracy"][2]
    return out


def test_each_rule_chooses_by_its_own_score():
    # a checkpoint that is best overall but loses the rare class, and one that keeps it
    common = rule_row(
        "epoch_0700",
        700,
        accuracy=(0.95, 0.70, 0.72),
        balanced_accuracy=(0.93, 0.80, 0.78),
        macro_f1=(0.94, 0.75, 0.80),
    )
    rare = rule_row(
        "epoch_0800",
        800,
        accuracy=(0.94, 0.90, 0.85),
        balanced_accuracy=(0.92, 0.93, 0.86),
        macro_f1=(0.93, 0.91, 0.88),
    )
    rows = [common, rare]
    assert choose_best(rows)["checkpoint"] == "epoch_0700"
    assert choose_best(rows, "balanced_accuracy")["checkpoint"] == "epoch_0800"
    assert choose_best(rows, "macro_f1")["checkpoint"] == "epoch_0800"
    by = choices_by_rule(rows)
    assert by["accuracy"]["head_key"] == "sweep/heads/epoch_0700.accuracy.pt" and by["accuracy"]["val_accuracy"] == 0.95
    assert by["balanced_accuracy"] | {"rule": ""} == {
        "checkpoint": "epoch_0800",
        "checkpoint_key": "supcon/ckpt/epoch_0800.pt",
        "epoch": 800,
        "head_key": "sweep/heads/epoch_0800.balanced_accuracy.pt",
        "best_head_epoch": 3,
        "val_accuracy": 0.92,
        "val_balanced_accuracy": 0.93,
        "val_macro_f1": 0.86,
        "rule": "",
    }
    with pytest.raises(BadInputError, match="choose one of accuracy, balanced_accuracy, macro_f1"):
        choose_best(rows, "recall")


def test_rule_ties_go_to_accuracy_then_f1_at_that_rules_epoch():
    a = rule_row(
        "epoch_0700", 700, accuracy=(0.9, 0.8, 0.8), balanced_accuracy=(0.90, 0.85, 0.80), macro_f1=(0.9, 0.8, 0.8)
    )
    b = rule_row(
        "epoch_0800", 800, accuracy=(0.9, 0.8, 0.8), balanced_accuracy=(0.91, 0.85, 0.70), macro_f1=(0.9, 0.8, 0.8)
    )
    assert (
        choose_best([a, b], "balanced_accuracy")["checkpoint"] == "epoch_0800"
    )  # equal balanced accuracy, higher accuracy


class FixedHead(torch.nn.Module):
    """Stands in for the head: returns the next epoch's prepared logits."""

    def __init__(self, preds, n_classes):
        super().__init__()
        self.preds = list(preds)
        self.n = n_classes
        self.weight = torch.nn.Parameter(torch.zeros(n_classes, 1))
        self.bias = torch.nn.Parameter(torch.zeros(n_classes))

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.as_tensor(self.preds.pop(0)), self.n).float()


def test_trainer_keeps_each_rules_first_best_head_epoch():
    # val: 8 of a common class, 2 of a rare one. Per epoch (acc, balanced acc, macro F1), worked out by hand:
    # 1: all common                          → 0.8, 0.5,    0.444
    # 2: 6/8 common, 2/2 rare (2 commons → rare) → 0.8, 0.875, 0.762
    # 3: 7/8 common, 1/2 rare                 → 0.8, 0.6875, 0.6875
    # 4: 8/8 common, 1/2 rare                 → 0.9, 0.75,   0.804
    # 5: as 2 again (ties keep the first)     → 0.8, 0.875, 0.762
    y = [0] * 8 + [1] * 2
    epochs = [[0] * 10, [0] * 6 + [1, 1] + [1, 1], [0] * 7 + [1] + [1, 0], [0] * 8 + [1, 0], [0] * 6 + [1, 1] + [1, 1]]
    trainer = LinearHeadTrainer(1, 2, 1, HeadParams(epochs=5), torch.device("cpu"))
    trainer.head = FixedHead(epochs, 2)
    vy = torch.as_tensor(y)
    for _ in epochs:
        trainer.end_epoch(torch.zeros(10, 1), vy)
    result = trainer.result(vy, 2, torch.zeros(1), torch.ones(1))
    assert {r: b.epoch for r, b in result.by_rule.items()} == {"accuracy": 4, "balanced_accuracy": 2, "macro_f1": 4}
    assert result.best_epoch == 4 and result.val_acc == pytest.approx(0.9)
    assert result.by_rule["balanced_accuracy"].val_balanced_accuracy == pytest.approx(0.875)
    assert result.by_rule["balanced_accuracy"].val_macro_f1 == pytest.approx((6 / 7 + 2 / 3) / 2)
    assert result.by_rule["macro_f1"].val_macro_f1 == pytest.approx((16 / 17 + 2 / 3) / 2)
    assert [round(e["macro_f1"], 3) for e in result.val_per_epoch] == [0.444, 0.762, 0.688, 0.804, 0.762]
