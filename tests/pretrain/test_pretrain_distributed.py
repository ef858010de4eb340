"""Two CPU processes under torchrun (gloo) fill the MoCo queue exactly as one process with the same global batch.

The backbone is BatchNorm-free (timm's test_efficientnet_gn): with BatchNorm, the query encoder of
each process normalises its own half batch and the key encoder a shuffled half (MoCo's shuffle BN),
a real and intended difference that is not what this test is about. With it gone, the gathered keys
(in rank order) and the averaged gradients are those of one process; the only differences are float
summation orders. Stated tolerance: queue, key encoder and weights within 1e-5 after 2 epochs (6 steps).
"""

from __future__ import annotations

from pipeline_fixtures import make_stats_root
from pretrain_helpers import assert_same_state, cli_args, final_state, small_cfg
from training_helpers import torchrun

from plankton_core.stage import run_stage

OPTIONS = dict(model="test_efficientnet_gn", epochs=2, batch_size=12, queue=48, base_lr=0.5, save_every=1)


def test_two_processes_fill_the_queue_like_one(tmp_path):
    one = make_stats_root(str(tmp_path / "one"), per_class=12)
    make_stats_root(str(tmp_path / "two"), per_class=12)
    run_stage("pretrain", small_cfg(**OPTIONS, include_test=True), one)  # all 36 crops: 3 steps per epoch

    done = torchrun(cli_args(str(tmp_path / "two"), **OPTIONS) + ["--deterministic", "--include-test"])
    assert done.returncode == 0, done.stderr[-3000:]

    from plankton_core.store import open_store

    two = open_store(str(tmp_path / "two"))
    a, b = final_state(two), final_state(one)
    assert (
        a["config"]["world_size"] == 2 and int(a["moco"]["queue_ptr"]) == int(b["moco"]["queue_ptr"]) == (6 * 12) % 48
    )
    assert_same_state(a, b, atol=1e-5)
