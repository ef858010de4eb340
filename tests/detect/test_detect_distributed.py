"""Two CPU processes under torchrun (gloo): per-device batch × world is the global batch, val/test are scored once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from plankton_core.checkpoint import load_checkpoint
from plankton_core.store import open_store

sys.path.insert(0, str(Path(__file__).parent))
from test_detect_stage import FLAGS, frames_into  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_two_processes_train_with_a_global_batch_of_two_and_write_one_result(tmp_path):
    images = str(tmp_path / "images")
    frames_into(open_store(images))
    root = str(tmp_path / "root")
    args = ["detect", "--root", root, "--input", images, *FLAGS, "--batch-size", "1"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "jobs.cli",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PUSHGATEWAY_URL", None)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("detect: done") == 1  # only rank 0 reports
    config = load_checkpoint(open_store(root), "detect/ckpt/last.pt")["config"]
    assert (config["world_size"], config["global_batch"], config["lr_scale"]) == (2, 2, 2 / 16)
    metrics = json.loads((Path(root) / "detect" / "metrics.json").read_text())
    assert metrics["images"] == metrics["frames"]["test"] > 0
    rows = (Path(root) / "detect" / "val.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
