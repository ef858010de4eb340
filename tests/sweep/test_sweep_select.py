"""--checkpoints parsing and the documented selection rule."""

from __future__ import annotations

import pytest

from plankton_core.errors import BadInputError
from plankton_core.sweep.select import choose_best, parse_checkpoint_spec

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
    [("999", "no checkpoint for epoch 999"), ("1000:1100", "no checkpoint in that range"), ("seven", "cannot read 'seven'"), (",", "selects nothing")],
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
    assert choose_best([row("epoch_0700", 700, 0.90, 0.99), row("epoch_0800", 800, 0.91, 0.50)])["checkpoint"] == "epoch_0800"


def test_rule_ties_go_to_macro_f1_then_later_epoch_then_numbered_over_last():
    rows = [row("epoch_0700", 700, 0.9, 0.80), row("epoch_0800", 800, 0.9, 0.85), row("epoch_0900", 900, 0.9, 0.85), row("last", 900, 0.9, 0.85)]
    assert choose_best(rows)["checkpoint"] == "epoch_0900"
    assert choose_best(rows[:2])["checkpoint"] == "epoch_0800"
    assert choose_best([row("last", 900, 0.9, 0.85), row("epoch_0800", 800, 0.9, 0.85)])["checkpoint"] == "last"
