"""Two CPU processes under torchrun (gloo): per-device batch × world is the global batch, val/test are scored once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from training_helpers import torchrun

from plankton_core.checkpoint import load_checkpoint
from plankton_core.store import open_store

sys.path.insert(0, str(Path(__file__).parent))
from test_detect_stage import FLAGS, frames_into  # noqa: E402


def test_two_processes_train_with_a_global_batch_of_two_and_write_one_result(tmp_path):
    images = str(tmp_path / "images")
    frames_into(open_store(images))
    root = str(tmp_path / "root")
    args = ["detect", "--root", root, "--input", images, *FLAGS, "--batch-size", "1"]
    done = torchrun(args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("detect: done") == 1  # only rank 0 reports
    config = load_checkpoint(open_store(root), "detect/ckpt/last.pt")["config"]
    assert (config["world_size"], config["global_batch"], config["lr_scale"]) == (2, 2, 2 / 16)
    metrics = json.loads((Path(root) / "detect" / "metrics.json").read_text())
    assert metrics["images"] == metrics["frames"]["test"] > 0
    rows = (Path(root) / "detect" / "val.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
