"""The faults of issue 15 that the contract, the store and the logs own: each test reproduces one finding.

1 concurrent runs (lease) · 2 same-size edits (content-aware listing, decode cache) · 3 transient S3
errors (exit 75 naming the operation and key) · 4 odd inputs (safe listing) · 5 a bad rerun keeps the
last result · 6 disk full / read-only (one line naming the path) · 7 a stale upstream chain (exit 3) ·
8 secrets in logs. SQL (8) and the pixel cap (9) are in tests/test_sql.py and tests/test_imageio.py.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest

from plankton_core import store as store_module
from plankton_core.config import option, stage_config
from plankton_core.data import ImageCache
from plankton_core.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_UPSTREAM,
    BadInputError,
    InterruptedRun,
    StageBusyError,
    StoreError,
    TransientStoreError,
    UpstreamNotReadyError,
)
from plankton_core.imageio import encode_png
from plankton_core.lease import acquire, lease_key
from plankton_core.stage import SUCCESS, Stage, register, run_stage, unregister
from plankton_core.store import open_store
from plankton_core.tables import read_json

ROOT_DIR = Path(__file__).resolve().parents[1]


@stage_config
class ToyConfig:
    n: int = option(2, "Parts to write.")
    fail: str = option("", "Where the body fails: '' (never), 'before' (before writing), 'after' (after writing).")


def _toy_body(cfg, ctx):
    if cfg.fail == "before":
        raise StoreError("checkpoint not found: epoch_0004 (the body refuses before writing)")
    for i in range(cfg.n):
        ctx.root.write_bytes(ctx.key(f"part-{i}.txt"), f"{cfg.n}".encode())
    if cfg.fail == "after":
        raise StoreError("failed after writing")
    return {"parts": cfg.n}


# a chain a → b → c, as crop → stats → … (c names both, as evaluate names stats, supcon and linear-sweep)
CHAIN = [
    Stage(name="fault-a", prefix="fault-a", config=ToyConfig, body=_toy_body),
    Stage(name="fault-b", prefix="fault-b", config=ToyConfig, body=_toy_body, upstream=("fault-a",)),
    Stage(name="fault-c", prefix="fault-c", config=ToyConfig, body=_toy_body, upstream=("fault-a", "fault-b")),
]


@pytest.fixture(autouse=True)
def _chain_registered():
    for stage in CHAIN:
        register(stage)
    yield
    for stage in CHAIN:
        unregister(stage.name)


def run(name: str, store, force: bool = False, **cfg):
    return run_stage(name, ToyConfig(**cfg), store, force=force)


# --- 1: a lease per stage and root ------------------------------------------------------------------


def test_a_second_run_of_a_stage_refuses_naming_holder_host_and_age(store):
    """Two runs of one stage at once would mix their outputs: the second refuses (exit 75)."""
    started, release = threading.Event(), threading.Event()
    outcome: dict = {}

    def slow(cfg, ctx):
        ctx.root.write_bytes(ctx.key("part.txt"), b"first")
        started.set()
        release.wait(30)
        return {"parts": 1}

    first = threading.Thread(
        target=lambda: outcome.setdefault(
            "first", run_stage(Stage(name="fault-a", prefix="fault-a", config=ToyConfig, body=slow), ToyConfig(), store)
        )
    )
    first.start()
    try:
        assert started.wait(30)
        with pytest.raises(StageBusyError) as err:
            run("fault-a", store, n=5)
    finally:
        release.set()
        first.join()
    message = str(err.value)
    assert err.value.exit_code == EXIT_INTERRUPTED == 75
    assert message.startswith(f"fault-a is already running on {store.uri}: run ")
    assert f"on host {socket.gethostname()}" in message and "has held its lease for " in message
    assert "\n" not in message
    assert outcome["first"].up_to_date is False
    assert store.read_bytes("fault-a/part.txt") == b"first"  # the second run wrote nothing
    assert not any(k.startswith("fault-a/part-") for k in store.list("fault-a"))
    # released: the next run goes ahead
    assert run("fault-a", store, n=3).counts == {"parts": 3}
    assert not store.exists(lease_key("fault-a"))


def test_racing_runs_one_wins(store):
    """Of several runs taking the lease at the same instant, exactly one gets it."""
    barrier = threading.Barrier(4)
    won, lost = [], []

    def take(i):
        barrier.wait()
        try:
            lease = acquire(store, "fault-a", f"run-{i}")
            won.append(lease)
        except StageBusyError:
            lost.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 3
    won[0].release()


def test_a_killed_local_holder_does_not_block_the_next_run(tmp_path):
    """flock dies with its process: a run killed by SIGKILL leaves nothing that blocks the next."""
    root = tmp_path / "artifacts"
    code = textwrap.dedent(
        f"""
        import sys, time
        from plankton_core.lease import acquire
        from plankton_core.store import open_store
        lease = acquire(open_store({str(root)!r}), "fault-a", "doomed")
        print("held", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT_DIR, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StageBusyError, match="run doomed on host"):
            acquire(open_store(str(root)), "fault-a", "second")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    acquire(open_store(str(root)), "fault-a", "third").release()


def test_s3_lease_expires_when_not_renewed_and_the_old_holder_cannot_commit(s3_root):
    """A crashed holder's lease lapses after its ttl (server clock); the holder that lost it refuses to commit."""
    root = open_store(s3_root)
    old = acquire(root, "fault-a", "crashed", ttl=2.0)
    old._stop.set()  # a crash: no more renewals
    old._thread.join()
    with pytest.raises(StageBusyError, match="run crashed on host"):
        acquire(root, "fault-a", "early", ttl=2.0)
    time.sleep(3.2)
    new = acquire(root, "fault-a", "taker", ttl=2.0)
    try:
        # the old holder wakes up: its conditional renewal fails, so it knows it lost the lease
        assert root.put_if_match(old.key, old.body, old.etag) is None
        old.lost = True
        with pytest.raises(InterruptedRun, match="lost its lease"):
            old.check()
    finally:
        new.release()
    assert not root.exists(lease_key("fault-a"))


def test_s3_lease_is_renewed_while_held(s3_root):
    root = open_store(s3_root)
    lease = acquire(root, "fault-a", "alive", ttl=1.2)
    try:
        time.sleep(2.0)  # longer than the ttl: renewals keep it
        with pytest.raises(StageBusyError, match="run alive"):
            acquire(root, "fault-a", "other", ttl=1.2)
        assert not lease.lost
    finally:
        lease.release()


def test_cli_second_run_exits_75_with_one_line(tmp_path, run_cli, stats_root):
    """Through the CLI: a held lease on stats → exit 75, one line naming the holder."""
    with acquire(open_store(stats_root), "stats", "holder-run"):
        result = run_cli("stats", "--root", stats_root, "--force")
    assert result.exit_code == EXIT_INTERRUPTED
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"plankton stats: error: stats is already running on {open_store(stats_root).uri}: run holder-run on host "
    )


# --- 2: content-aware listing and decode cache ----------------------------------------------------------


def test_same_size_rewrite_changes_the_listing_version(store):
    store.write_bytes("cls/a.png", b"x" * 100)
    before = list(store.list_inputs(""))
    time.sleep(0.01)
    store.write_bytes("cls/a.png", b"y" * 100)
    after = list(store.list_inputs(""))
    assert [(e.key, e.size) for e in before] == [(e.key, e.size) for e in after] == [("cls/a.png", 100)]
    assert before[0].version and before[0].version != after[0].version


def test_crop_fingerprint_sees_a_same_size_edit(tmp_path):
    from plankton_core.crop.stage import input_fingerprint

    source = open_store(str(tmp_path / "in"))
    source.write_bytes("cls/a.png", encode_png(np.full((8, 8), 10, np.uint8)))
    first = input_fingerprint(source)
    time.sleep(0.01)
    source.write_bytes(
        "cls/a.png", encode_png(np.full((8, 8), 200, np.uint8))
    )  # same size: constant images compress alike
    assert source.size("cls/a.png") == len(encode_png(np.full((8, 8), 10, np.uint8)))
    assert input_fingerprint(source) != first


def _finish_crop(store, value: int, force: bool = True):
    """A stand-in crop run writing one 16×16 crop of `value` (same byte size for every value)."""

    def body(cfg, ctx):
        ctx.root.write_bytes("crop/crops/c/x_0.png", encode_png(np.full((16, 16), value, np.uint8)))
        return {}

    from pipeline_fixtures import finish_stage

    finish_stage(store, "crop", {"fabricated": True}, body)


def test_decode_cache_follows_a_crop_rerun_with_same_size_pixels(tmp_path):
    """crop --force rewrote the crops (same names, same sizes): the decode cache must not serve the old pixels."""
    store = open_store(str(tmp_path / "artifacts"))
    _finish_crop(store, 50)
    assert ImageCache.build(store, ["crop/crops/c/x_0.png"], 16).array[0, 0, 0, 0] == 50
    _finish_crop(store, 60)
    assert ImageCache.build(store, ["crop/crops/c/x_0.png"], 16).array[0, 0, 0, 0] == 60


def test_force_rebuilds_the_decode_cache(tmp_path):
    """--force bypasses every cache: a forced run decodes again even when the cache key is unchanged."""
    store = open_store(str(tmp_path / "artifacts"))
    _finish_crop(store, 50)
    keys = ["crop/crops/c/x_0.png"]
    ImageCache.build(store, keys, 16)
    # the crop changed behind the cache's back (its key cannot see this): only --force can notice
    store.write_bytes(keys[0], encode_png(np.full((16, 16), 70, np.uint8)))
    seen = {}

    def body(cfg, ctx):
        seen["plain"] = int(ImageCache.build(store, keys, 16).array[0, 0, 0, 0])
        return {}

    run_stage(Stage(name="fault-a", prefix="fault-a", config=ToyConfig, body=body), ToyConfig(), store)
    assert seen["plain"] == 50  # not forced: the cache is reused
    run_stage(Stage(name="fault-a", prefix="fault-a", config=ToyConfig, body=body), ToyConfig(), store, force=True)
    assert seen["plain"] == 70


# --- 3: transient store errors --------------------------------------------------------------------------


def _fail_operation(client, operation: str, status: int, calls: list):
    """Make every `operation` request of `client` answer HTTP `status` (botocore retries see a real reply)."""
    from botocore.awsrequest import AWSResponse

    class Raw:
        def stream(self, **kwargs):
            yield b""

    def reply(request, **kwargs):
        calls.append(request.url)
        return AWSResponse(request.url, status, {}, Raw())

    client.meta.events.register(f"before-send.s3.{operation}", reply)


def test_a_5xx_is_retried_then_exit_75_naming_operation_and_key(s3_root, monkeypatch):
    monkeypatch.setenv("PLANKTON_S3_MAX_ATTEMPTS", "3")
    store = open_store(s3_root)
    calls: list = []
    _fail_operation(store._client, "PutObject", 503, calls)
    with pytest.raises(TransientStoreError) as err:
        store.write_bytes("supcon/checkpoints/epoch_0001.pt", b"weights")
    assert len(calls) == 3  # retried, with backoff, as configured
    assert err.value.exit_code == EXIT_INTERRUPTED
    assert str(err.value).startswith(f"S3 write of {s3_root}/supcon/checkpoints/epoch_0001.pt failed after 3 attempts:")


def test_a_body_store_error_is_reported_not_the_metrics_write(s3_root, monkeypatch):
    """The checkpoint write failed and then metrics.prom too: the error names the checkpoint, exit 75."""
    monkeypatch.setenv("PLANKTON_S3_MAX_ATTEMPTS", "2")
    store = open_store(s3_root)
    run("fault-a", store)  # a first good result

    def body(cfg, ctx):
        _fail_operation(store._client, "PutObject", 500, [])  # S3 goes away mid-run
        ctx.root.write_bytes(ctx.key("checkpoints/epoch_0001.pt"), b"weights")

    with pytest.raises(
        TransientStoreError, match=r"^S3 write of .*/fault-a/checkpoints/epoch_0001.pt failed after 2 attempts"
    ):
        run_stage(Stage(name="fault-a", prefix="fault-a", config=ToyConfig, body=body), ToyConfig(), store, force=True)


def test_bad_credentials_and_missing_bucket_stay_exit_2(s3_bucket, s3_env, monkeypatch):
    with pytest.raises(StoreError) as err:
        open_store(f"s3://no-such-bucket-{os.getpid()}/x")
    assert not isinstance(err.value, TransientStoreError) and err.value.exit_code == EXIT_BAD_INPUT
    store = open_store(f"s3://{s3_bucket}/x")
    _fail_operation(store._client, "GetObject", 403, [])
    with pytest.raises(StoreError) as err:
        store.read_bytes("a.json")
    assert not isinstance(err.value, TransientStoreError) and err.value.exit_code == EXIT_BAD_INPUT


# --- 4: inputs listed safely ----------------------------------------------------------------------------


def test_local_listing_records_links_loops_dot_entries_and_odd_names(tmp_path):
    root = tmp_path / "in"
    (root / "cls").mkdir(parents=True)
    (root / "cls" / "ok.png").write_bytes(b"png")
    (root / "cls" / "loop.png").symlink_to(root / "cls" / "loop.png")
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0")
    (root / "cls" / "secret.png").symlink_to(outside)
    (root / "cls" / "inside.png").symlink_to(root / "cls" / "ok.png")
    (root / "cls" / "gone.png").symlink_to(root / "cls" / "nothing.png")
    (root / "cls" / "linked").symlink_to(root / "cls")
    (root / "cls" / ".hidden").mkdir()
    (root / "cls" / ".hidden" / "x.png").write_bytes(b"png")
    (root / "cls" / ".DS_Store").write_bytes(b"junk")
    (root / "cls" / "back\\slash.png").write_bytes(b"png")
    listed = {e.key: e for e in open_store(str(root)).list_inputs("")}
    problems = {k: e.problem.split(":")[0] for k, e in listed.items()}
    assert problems == {
        "cls/.DS_Store": "hidden_file",
        "cls/.hidden": "hidden_folder",
        "cls/back\\slash.png": "odd_name",
        "cls/gone.png": "broken_symlink",
        "cls/inside.png": "",
        "cls/linked": "symlinked_folder",
        "cls/loop.png": "symlink_loop",
        "cls/ok.png": "",
        "cls/secret.png": "symlink_outside_root",
    }
    assert listed["cls/inside.png"].size == 3 and listed["cls/secret.png"].size == 0


def test_s3_listing_records_odd_keys(s3_bucket, s3_env):
    client = boto3.client("s3", endpoint_url=s3_env)
    for key in (
        "in/cls/ok.png",
        "in/cls//double.png",
        "in/cls/./dot.png",
        "in/cls/../up.png",
        "in/cls/.hidden.png",
        "in/cls/back\\slash.png",
        "in/cls/folder/",
    ):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"" if key.endswith("/") else b"png")
    listed = {e.key: e.problem.split(":")[0] for e in open_store(f"s3://{s3_bucket}/in").list_inputs("")}
    assert listed == {
        "cls/ok.png": "",
        "cls//double.png": "odd_name",
        "cls/./dot.png": "odd_name",
        "cls/../up.png": "odd_name",
        "cls/.hidden.png": "hidden_file",
        "cls/back\\slash.png": "odd_name",
    }


# --- 5: a bad rerun keeps the last result ---------------------------------------------------------------


def test_a_rerun_failing_before_it_writes_keeps_the_last_result(store):
    run("fault-a", store, n=2)
    with pytest.raises(StoreError, match="epoch_0004"):
        run("fault-a", store, n=3, fail="before")
    assert store.exists(f"fault-a/{SUCCESS}")
    assert read_json(store, "fault-a/run.json")["config"]["n"] == 2
    assert run("fault-a", store, n=2).up_to_date  # still the last good result
    # a rerun that did write and then failed leaves no _SUCCESS: its outputs are mixed
    with pytest.raises(StoreError, match="after writing"):
        run("fault-a", store, n=3, fail="after")
    assert not store.exists(f"fault-a/{SUCCESS}")


def test_a_crop_rerun_failing_mid_crop_keeps_the_last_crop(tmp_path, monkeypatch):
    """A crop rerun beside a last result writes only to its staging place until the input passed, so one that
    fails halfway (a store error while writing a crop) leaves the manifest, crops and `_SUCCESS` as they were."""
    from plankton_core.crop import CropConfig
    from plankton_core.crop import stage as crop_stage
    from plankton_core.synth import SynthConfig, generate

    images = open_store(str(tmp_path / "images"))
    generate(images, SynthConfig(classes=2, per_class=6, size=48, seed=4))
    root = open_store(str(tmp_path / "art"))
    run_stage("crop", CropConfig(input=images.uri, workers=1), root)
    before = {k: root.read_bytes(k) for k in root.list("crop") if not k.endswith("metrics.prom")}
    real, calls = crop_stage.crop_file, []

    def failing(task, source, target, cfg, segmenter):
        calls.append(task.key)
        if len(calls) == 5:
            raise StoreError(f"write failed: {target.uri}/{task.crop_base}_0.png")
        return real(task, source, target, cfg, segmenter)

    monkeypatch.setattr(crop_stage, "crop_file", failing)
    with pytest.raises(StoreError, match="write failed"):
        run_stage("crop", CropConfig(input=images.uri, workers=1, pad=1), root)
    after = {k: root.read_bytes(k) for k in root.list("crop") if not k.endswith("metrics.prom")}
    assert after == before and root.exists(f"crop/{SUCCESS}")
    assert run_stage("crop", CropConfig(input=images.uri, workers=1), root).up_to_date


def test_lut_with_a_mistyped_checkpoint_keeps_the_last_lut(tmp_path):
    from lut_fixtures import make_lut_upstream

    from plankton_core.lut import LutConfig

    store = make_lut_upstream(str(tmp_path / "artifacts"), per_class=8)
    run_stage("lut", LutConfig(prune=False), store)
    with pytest.raises(BadInputError, match="checkpoint not found: .*/epoch_0004"):
        run_stage("lut", LutConfig(prune=False, checkpoint="epoch_0004"), store)
    assert store.exists(f"lut/{SUCCESS}")
    assert run_stage("lut", LutConfig(prune=False), store).up_to_date


def test_supcon_batch_larger_than_the_split_keeps_the_last_checkpoints(stats_root):
    from supcon.supcon_helpers import small_cfg

    store = open_store(stats_root)
    run_stage("supcon", small_cfg(epochs=1, batch_size=6), store)
    with pytest.raises(BadInputError, match="larger than the"):
        run_stage("supcon", small_cfg(epochs=1, batch_size=10_000), store)
    assert store.exists(f"supcon/{SUCCESS}")
    assert run_stage("supcon", small_cfg(epochs=1, batch_size=6), store).up_to_date


# --- 6: disk full, read-only ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "words"), [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system")]
)
def test_disk_full_or_read_only_is_one_line_naming_the_path(tmp_path, monkeypatch, code, words):
    store = open_store(str(tmp_path / "artifacts"))
    run("fault-a", store)

    def refuse(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store_module.os, "replace", refuse)

    def body(cfg, ctx):
        ctx.root.write_bytes(ctx.key("checkpoints/epoch_0001.pt"), b"weights")

    with pytest.raises(StoreError) as err:
        run_stage(Stage(name="fault-a", prefix="fault-a", config=ToyConfig, body=body), ToyConfig(), store, force=True)
    assert (
        str(err.value)
        == f"cannot write {tmp_path / 'artifacts' / 'fault-a' / 'checkpoints' / 'epoch_0001.pt'}: {words}"
    )
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_a_write_error_inside_the_callers_block_names_the_target(tmp_path):
    store = open_store(str(tmp_path / "artifacts"))
    with pytest.raises(StoreError, match=r"cannot write .*/big\.bin: no space left on device"):
        with store.open_write("big.bin") as fh:
            fh.write(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(store.list("")) == []  # no half file, no temporary left


# --- 7: the upstream chain --------------------------------------------------------------------------------


def test_a_stage_whose_upstream_changed_since_is_stale_for_its_downstream(store):
    """c names a and b; a was rerun with new options after b ran: b is stale, so c refuses (exit 3)."""
    for name in ("fault-a", "fault-b", "fault-c"):
        run(name, store)
    assert run("fault-c", store).up_to_date
    run("fault-a", store, n=5)
    with pytest.raises(UpstreamNotReadyError) as err:
        run("fault-c", store)
    assert err.value.exit_code == EXIT_UPSTREAM
    assert (
        str(err.value)
        == "upstream stage 'fault-b' is stale: 'fault-a' changed since it ran; rerun `plankton fault-b` first"
    )
    run("fault-b", store)
    assert not run("fault-c", store).up_to_date


def test_a_missing_success_anywhere_up_the_chain_refuses(store):
    for name in ("fault-a", "fault-b", "fault-c"):
        run(name, store)
    store.delete(f"fault-b/{SUCCESS}")
    with pytest.raises(UpstreamNotReadyError, match="upstream stage 'fault-b' has not finished"):
        run("fault-c", store)


def test_evaluate_refuses_when_stats_changed_after_supcon(tmp_path):
    """Finding 7: after stats changed, evaluate does not say "up to date": it exits 3 naming the stale stage."""
    from lut_fixtures import make_lut_upstream
    from pipeline_fixtures import finish_stage

    from plankton_core.evaluate.config import EvaluateConfig

    store = make_lut_upstream(str(tmp_path / "artifacts"), per_class=8)
    finish_stage(store, "stats", {"changed": True}, lambda cfg, ctx: {})
    with pytest.raises(UpstreamNotReadyError, match="upstream stage 'supcon' is stale: 'stats' changed since it ran"):
        run_stage("evaluate", EvaluateConfig(), store)


# --- 8: secrets in logs -----------------------------------------------------------------------------------


def test_log_lines_never_show_url_passwords_or_aws_keys(monkeypatch):
    from plankton_core.metrics import StageMetrics
    from plankton_core.progress import RedactingFilter

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PUSHGATEWAY_URL", f"http://ops:hunter2@127.0.0.1:{port}")
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(RedactingFilter())
    logging.getLogger().addHandler(handler)
    try:
        StageMetrics("fault-a").push(final=True)
        logging.getLogger("botocore.endpoint").warning(
            "Sending http request: headers={'Authorization': b'AWS4-HMAC-SHA256 "
            "Credential=AKIDEXAMPLE/20260101/us-east-1/s3/aws4_request, Signature=0123abcd'} body=%s",
            "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
        )
    finally:
        logging.getLogger().removeHandler(handler)
    text = buf.getvalue()
    assert "could not push metrics to http://***@127.0.0.1" in text
    for secret in ("hunter2", "ops:", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY", "AKIDEXAMPLE", "0123abcd"):
        assert secret not in text


def test_setup_logging_installs_the_filter_on_every_root_handler():
    from plankton_core.progress import RedactingFilter, setup_logging

    setup_logging()
    handlers = logging.getLogger().handlers
    assert handlers and all(any(isinstance(f, RedactingFilter) for f in h.filters) for h in handlers)


def test_cli_error_lines_are_redacted(run_cli, monkeypatch):
    monkeypatch.setenv("PLANKTON_S3_MAX_ATTEMPTS", "1")
    result = run_cli("sql", "SELECT 1", "--root", "s3://bucket/x", "--s3-endpoint", "http://user:topsecret@127.0.0.1:1")
    assert result.exit_code == EXIT_INTERRUPTED  # unreachable: transient
    assert "user:***@" not in result.stderr and "topsecret" not in result.stderr
    assert "http://***@127.0.0.1:1" in result.stderr


@pytest.mark.parametrize("failing", ["epoch_0001.pt", "last.pt", "metrics.jsonl"])
def test_a_resumed_run_after_a_full_disk_writes_every_checkpoint_and_metrics_row(tmp_path, monkeypatch, failing):
    """The disk filled while epoch 1 was being saved; after space came back the resumed run must leave every
    epoch's checkpoint and metrics row, epoch_0001.pt and epoch 1's row included."""
    sys.path.insert(0, str(Path(__file__).parent / "training"))
    from training_toy import EPOCHS, METRICS, PREFIX, fit

    from plankton_core.checkpoint import checkpoint_key, epoch_name
    from plankton_core.training import choose_resume

    store = open_store(str(tmp_path / "root"))
    real_replace = store_module.os.replace
    state = {"armed": True}

    def full_once(src, dst):
        if state["armed"] and str(dst).endswith(failing):
            state["armed"] = False
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", full_once)
    with pytest.raises(StoreError, match=rf"^cannot write .*{failing}: no space left on device$"):
        fit(store, choose_resume(store, PREFIX, "auto", {"lr": 0.05, "epochs": EPOCHS}, ("lr", "epochs")))
    fit(store, choose_resume(store, PREFIX, "auto", {"lr": 0.05, "epochs": EPOCHS}, ("lr", "epochs")))
    for epoch in range(1, EPOCHS + 1):
        assert store.exists(checkpoint_key(epoch_name(epoch), PREFIX)), epoch
    lines = [json.loads(line) for line in store.read_bytes(METRICS).decode().splitlines()]
    assert [row["epoch"] for row in lines] == list(range(1, EPOCHS + 1))


def test_crop_records_every_odd_input_as_an_unreadable_row(tmp_path):
    """Finding 4 end to end: a loop, links out of the input, a linked folder, a dot folder and a backslash name
    are manifest rows with their reason; nothing outside the input is read; the good images are cropped."""
    from lut_fixtures import frame_png

    from plankton_core.crop.config import CropConfig
    from plankton_core.tables import read_parquet

    src = tmp_path / "in"
    (src / "cls").mkdir(parents=True)
    for i in range(6):
        (src / "cls" / f"img{i}.png").write_bytes(frame_png("disc", seed=i))
    secret = tmp_path / "account.png"
    secret.write_bytes(frame_png("ring"))
    (src / "cls" / "loop.png").symlink_to(src / "cls" / "loop.png")
    (src / "cls" / "out.png").symlink_to(secret)
    (src / "cls" / "linked").symlink_to(src / "cls")
    (src / "cls" / ".thumbs").mkdir()
    (src / "cls" / ".thumbs" / "t.png").write_bytes(frame_png("disc"))
    (src / "cls" / "a\\b.png").write_bytes(frame_png("disc"))
    root = open_store(str(tmp_path / "artifacts"))
    run_stage("crop", CropConfig(input=str(src), workers=1, max_bad_fraction=0.5), root)
    rows = {r["source_key"]: r for r in read_parquet(root, "crop/manifest.parquet").to_pylist()}
    reasons = {k: (r["status"], r["reason"].split(":")[0]) for k, r in rows.items() if r["status"] == "unreadable"}
    assert reasons == {
        "cls/.thumbs": ("unreadable", "hidden_folder"),
        "cls/a\\b.png": ("unreadable", "odd_name"),
        "cls/linked": ("unreadable", "symlinked_folder"),
        "cls/loop.png": ("unreadable", "symlink_loop"),
        "cls/out.png": ("unreadable", "symlink_outside_root"),
    }
    assert {k for k, r in rows.items() if r["status"] == "kept"} == {f"cls/img{i}.png" for i in range(6)}


# --- 4b: a class folder that is a link, a key with a '..' segment: refused with the real reason -----------


def test_crop_refuses_a_linked_class_folder_naming_the_link(tmp_path, run_cli):
    """Not a class 'linked_dir' whose images 'could not be decoded': exit 2 before anything is written."""
    from lut_fixtures import frame_png

    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    for folder in (src / "cls", elsewhere):
        folder.mkdir(parents=True)
        for i in range(3):
            (folder / f"img{i}.png").write_bytes(frame_png("disc", seed=i))
    for target in (elsewhere, src / "cls"):  # out of the input, and inside it
        link = src / "linked_dir"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        result = run_cli("crop", "--input", src, "--root", tmp_path / "artifacts", "--workers", "1")
        assert result.exit_code == 2, result.output
        assert "class folder linked_dir is a symbolic link" in result.stderr and "decoded" not in result.output
        assert not (tmp_path / "artifacts" / "crop").exists()


def test_crop_refuses_an_s3_key_with_a_dot_dot_segment(s3_bucket, s3_env, tmp_path, run_cli):
    """`in/../x.png` under --input s3://…/in is not a class '..': exit 2 naming the key and the reason."""
    from lut_fixtures import frame_png

    client = boto3.client("s3", endpoint_url=s3_env)
    for key in ("in/cls/img0.png", "in/cls/img1.png", "in/../x.png"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=frame_png("disc"))
    result = run_cli("crop", "--input", f"s3://{s3_bucket}/in", "--root", tmp_path / "artifacts", "--workers", "1")
    assert result.exit_code == 2, result.output
    assert f"key s3://{s3_bucket}/in/../x.png has a '..' segment" in result.stderr
    assert "decoded" not in result.output and not (tmp_path / "artifacts" / "crop").exists()
