"""A swept pipeline root (for evaluate and report) and a finished lut stage's outputs (for the report)."""

from __future__ import annotations

from pipeline_fixtures import finish_stage
from sweep.sweep_fixtures import make_supcon_root

from plankton_core.tables import write_json


def swept(root_uri, run_cli, **kwargs):
    store = make_supcon_root(root_uri, epochs=(2, 4), last=False, **kwargs)
    result = run_cli("linear-sweep", "--root", root_uri, "--head-epochs", "10")
    assert result.exit_code == 0, result.output
    return store


def finish_lut(store):
    """lut finished under the contract, leaving what the report reads of it."""
    rows = [
        {
            "name": "exact, top-1",
            "metrics": {
                "accuracy": 0.9,
                "macro_precision": 0.8,
                "macro_recall": 0.7,
                "macro_f1": 0.75,
                "balanced_accuracy": 0.7,
                "top5_accuracy": 0.99,
            },
        },
        {
            "name": "pruned T=0.93, kNN vote",
            "metrics": {"accuracy": 0.875, "macro_precision": 0.5, "macro_recall": 0.25, "macro_f1": 0.3},
        },
    ]

    def body(cfg, ctx):
        write_json(store, "lut/retrieval.json", {"rows": rows, "prune": {"threshold": 0.93, "kept_fraction": 0.55}})
        store.write_bytes("lut/prune_sweep.png", store.read_bytes("sweep/sweep.png"))
        return {}

    finish_stage(store, "lut", {"fabricated": True}, body)
