"""The pretrain stage end to end (local folder and S3 server), its consumers, exact resume with the queue,
the test split left out by default, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline_fixtures import draw_shape, make_stats_root
from pretrain_helpers import assert_same_state, cli_args, final_state, metrics_rows, sigterm_during_step, small_cfg

from plankton_core.data import load_splits
from plankton_core.errors import BadInputError, InterruptedRun
from plankton_core.evaluate.config import EvaluateConfig
from plankton_core.imageio import encode_png
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.supcon.config import SupConConfig
from plankton_core.sweep.config import SweepConfig
from plankton_core.tables import read_json


def test_moco_end_to_end_then_supcon_and_linear_sweep_start_from_it(root_uri):
    store = make_stats_root(root_uri, per_class=12)  # 36 kept crops (24 of them val/test: pretraining needs no labels)
    result = run_stage("pretrain", small_cfg(include_test=True), store)
    assert result.counts["train_images"] == 36 and result.counts["steps"] == 6
    assert result.counts["test_images_seen"] == 9 and any("--include-test" in n for n in result.notes)
    ckpt = final_state(store)
    assert {"model", "head", "moco", "optimizer", "scheduler", "config"} <= set(ckpt)
    assert ckpt["moco"]["queue"].shape == (128, 48)
    assert int(ckpt["moco"]["queue_ptr"]) == (6 * 12) % 48  # 6 steps of 12 keys went through a queue of 48
    assert np.allclose(ckpt["moco"]["queue"].norm(dim=0).numpy(), 1.0, atol=1e-5)
    assert [r["epoch"] for r in metrics_rows(store)] == [1, 2]
    assert store.exists("pretrain/_SUCCESS") and store.exists("pretrain/ckpt/epoch_0001.pt")

    sup = run_stage(
        "supcon",
        SupConConfig(
            model="test_resnet", epochs=1, batch_size=12, save_every=1, device="cpu", workers=0, init="pretrain"
        ),
        store,
    )
    assert any("pretrain/ckpt/last.pt" in n for n in sup.notes)
    assert read_json(store, "supcon/run.json")["inputs"]["pretrain"] == read_json(store, "pretrain/run.json")["digest"]

    sweep = run_stage("linear-sweep", SweepConfig(source="pretrain", head_epochs=2, device="cpu"), store)
    assert sweep.counts["checkpoints"] == 3  # epoch_0001, epoch_0002, last of pretrain
    assert read_json(store, "sweep/selection.json")["checkpoint_key"].startswith("pretrain/ckpt/")

    # the probed backbone saw the test images: evaluate's metrics and report say so
    evaluated = run_stage("evaluate", EvaluateConfig(bootstrap=0, device="cpu"), store)
    metrics = read_json(store, "evaluate/metrics.json")
    assert metrics["pretrain_saw_test"] is True and metrics["pretrain_test_images"] == 9
    assert any(n.startswith("warning: ") and "--include-test" in n for n in evaluated.notes)
    report = store.read_bytes("evaluate/report.md").decode().replace("**", "")
    assert "Warning: the backbone descends from a pretrain run with --include-test" in report


def test_the_test_split_stays_out_by_default_and_run_json_says_so(tmp_path):
    store = make_stats_root(str(tmp_path / "root"), per_class=12)  # 36 kept crops, 9 of them in test
    result = run_stage("pretrain", small_cfg(epochs=1), store)
    non_test = [
        k for k, s in zip(*(load_splits(store).column(c).to_pylist() for c in ("crop_key", "split"))) if s != "test"
    ]
    assert result.counts["train_images"] == len(non_test) == 27
    run = read_json(store, "pretrain/run.json")
    assert run["config"]["include_test"] is False and run["counts"]["test_images_seen"] == 0
    assert final_state(store)["config"]["test_images_seen"] == 0
    assert not any("--include-test" in n for n in result.notes)


def test_simclr_trains_and_up_to_date_on_rerun(tmp_path):
    store = make_stats_root(str(tmp_path / "root"), per_class=12)
    cfg = small_cfg(method="simclr", temperature=0.5)
    first = run_stage("pretrain", cfg, store)
    assert "moco" not in final_state(store) and first.counts["method"] == "simclr"
    assert run_stage("pretrain", cfg, store).up_to_date


def test_sigterm_then_rerun_resumes_exactly_including_the_queue(tmp_path, monkeypatch):
    straight = make_stats_root(str(tmp_path / "a"), per_class=12)
    stopped = make_stats_root(str(tmp_path / "b"), per_class=12)
    run_stage("pretrain", small_cfg(include_test=True), straight)  # 36 crops: 3 steps per epoch

    sigterm_during_step(monkeypatch, 4)  # in epoch 2, after its first step
    with pytest.raises(InterruptedRun, match="exit|stopped"):
        run_stage("pretrain", small_cfg(include_test=True), stopped)
    partial = final_state(stopped)
    assert int(partial["step"]) == 4 and int(partial["moco"]["queue_ptr"]) == (4 * 12) % 48
    monkeypatch.undo()
    resumed = run_stage("pretrain", small_cfg(include_test=True), stopped)
    assert resumed.counts["resumed_from"] == "pretrain/ckpt/last.pt"
    assert_same_state(final_state(stopped), final_state(straight))
    assert [r["loss"] for r in metrics_rows(stopped)] == pytest.approx(
        [r["loss"] for r in metrics_rows(straight)], rel=1e-6
    )


def frames(folder, n: int, seed: int = 0) -> None:
    """Dark frames with one bright object each, inside sub-folders (as the crop stage reads them)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        frame = np.zeros((64, 64), dtype=np.uint8)
        frame[16:48, 16:48] = draw_shape(("disc", "bar", "cross")[i % 3], 32, rng, dark_field=True)
        path = folder / f"sample{i % 2}" / f"f{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(frame))


def test_unlabeled_images_read_in_place_or_cropped_first(tmp_path):
    store = make_stats_root(str(tmp_path / "root"), per_class=4)  # 12 labelled crops, 3 of them in test
    unlabeled = tmp_path / "unlabeled"
    frames(unlabeled, 12)
    plain = run_stage("pretrain", small_cfg(unlabeled=str(unlabeled), epochs=1), store)
    assert plain.counts["unlabeled_images"] == 12 and plain.counts["train_images"] == 21

    cropped = run_stage("pretrain", small_cfg(unlabeled=str(unlabeled), crop=True, epochs=1, resume="never"), store)
    assert cropped.counts["unlabeled_images"] >= 12  # at least one object per frame
    assert store.exists("pretrain/unlabeled/crop/_SUCCESS") and store.exists("pretrain/unlabeled/crop/manifest.parquet")
    assert final_state(store)["config"]["unlabeled_images"] == cropped.counts["unlabeled_images"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"crop": True}, "--crop segments the --unlabeled images"),
        ({"queue": 50}, "must be a multiple of --batch-size"),
        ({"batch_size": 60, "queue": 60}, "larger than the 27 images"),  # 36 crops, 9 in test
        ({"unlabeled": "/nonexistent/unlabeled"}, "no images under --unlabeled"),
    ],
)
def test_bad_inputs_are_one_line_errors_before_any_output(tmp_path, options, message):
    store = make_stats_root(str(tmp_path / "root"), per_class=12)
    with pytest.raises(BadInputError, match=message):
        run_stage("pretrain", small_cfg(**options), store)
    assert not store.exists("pretrain/ckpt/last.pt")


def test_cli_exit_codes(run_cli, tmp_path):
    root = str(tmp_path / "root")
    assert run_cli(*cli_args(root)).exit_code == 3  # stats has not finished
    make_stats_root(root, per_class=12)
    bad = run_cli(*cli_args(root, queue=50))
    assert bad.exit_code == 2 and "multiple of --batch-size" in bad.output
    done = run_cli(*cli_args(root, epochs=1))
    assert done.exit_code == 0, done.output
    assert open_store(root).exists("pretrain/_SUCCESS")
