"""The artifact store: the same tests on a local folder and on a real S3 HTTP server (moto server mode)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

import plankton_core.store as store_module
from plankton_core.errors import StoreError
from plankton_core.store import LocalStore, S3Store, StoreURI, join, open_store, split_uri


def test_write_read_exists_size_overwrite(store):
    assert not store.exists("a/b.bin")
    store.write_bytes("a/b.bin", b"hello")
    assert store.exists("a/b.bin") and store.read_bytes("a/b.bin") == b"hello" and store.size("a/b.bin") == 5
    store.write_bytes("a/b.bin", b"")
    assert store.exists("a/b.bin") and store.read_bytes("a/b.bin") == b"" and store.size("a/b.bin") == 0
    assert not store.exists("a")  # a folder is not an object


def test_missing_objects_are_one_line_store_errors(store):
    for verb in (store.read_bytes, store.size, store.open_read):
        with pytest.raises(StoreError, match=r"not found in store: .*nope/x\.bin$"):
            verb("nope/x.bin")
    with pytest.raises(StoreError, match="not found in store"):
        store.get_file("nope/x.bin", os.devnull)


def test_list_gives_keys_under_a_prefix_sorted_like_s3(store):
    keys = ["a/z.txt", "a/c/d.txt", "a/b.txt", "a/c.txt", "ab/x.txt", "a-b/y.txt", "top.txt"]
    for k in keys:
        store.write_bytes(k, k.encode())
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("a")) == ["a/b.txt", "a/c.txt", "a/c/d.txt", "a/z.txt"]  # not ab/ nor a-b/
    assert list(store.list("a/")) == list(store.list("a"))
    assert list(store.list("a/c.txt")) == ["a/c.txt"]  # a key lists itself
    assert list(store.list("nothing/here")) == []


def test_child_is_a_store_rooted_at_a_prefix(store):
    child = store.child("stage/sub")
    child.write_bytes("x.json", b"{}")
    assert store.read_bytes("stage/sub/x.json") == b"{}"
    assert list(child.list("")) == ["x.json"]
    assert child.uri.endswith("/stage/sub") and child.uri.startswith(store.uri)
    grandchild = child.child("deeper")
    grandchild.write_bytes("y", b"1")
    assert store.exists("stage/sub/deeper/y")


def test_delete_is_idempotent(store):
    store.write_bytes("d/x", b"1")
    store.delete("d/x")
    assert not store.exists("d/x")
    store.delete("d/x")  # deleting what is gone is fine
    assert list(store.list("d")) == []


def test_delete_prefix_removes_everything_under_it_and_nothing_else(store):
    for i in range(5):
        store.write_bytes(f"crop/crops/a/{i}.png", b"x")
    store.write_bytes("crop/crops/b/deep/0.png", b"x")
    store.write_bytes("crop/crops-other/keep.png", b"x")  # shares the prefix text, not the folder
    store.write_bytes("crop/manifest.parquet", b"x")
    assert store.delete_prefix("crop/crops") == 6
    assert list(store.list("crop")) == ["crop/crops-other/keep.png", "crop/manifest.parquet"]
    assert store.delete_prefix("crop/crops") == 0


def test_s3_delete_prefix_sends_one_request_per_thousand_objects(s3_root):
    from plankton_core.store import open_store

    store = open_store(s3_root)
    keys = [f"many/{i:05d}" for i in range(1001)]
    for key in keys:
        store._client.put_object(Bucket=store.bucket, Key=store._k(key), Body=b"")
    calls = []
    real = store._client.delete_objects
    store._client.delete_objects = lambda **kw: calls.append(len(kw["Delete"]["Objects"])) or real(**kw)
    assert store.delete_prefix("many") == 1001
    assert calls == [1000, 1]
    assert list(store.list("many")) == []


def test_put_file_get_file_and_local_path(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    store.put_file(src, "files/src.bin")
    out = tmp_path / "out.bin"
    store.get_file("files/src.bin", out)
    assert out.read_bytes() == src.read_bytes()
    with store.local_path("files/src.bin") as path:
        assert path.read_bytes() == src.read_bytes() and path.suffix == ".bin"
    if isinstance(store, S3Store):
        assert not path.exists()  # the temporary download is gone
    else:
        assert path == store.path / "files/src.bin"  # the file itself, no copy
    with pytest.raises(StoreError, match="not found"):
        with store.local_path("files/missing.bin"):
            pytest.fail("local_path yielded a path for a missing key")


def test_list_sizes_and_is_dir(store):
    store.write_bytes("d/a.bin", b"12345")
    store.write_bytes("d/sub/b.bin", b"")
    store.write_bytes("dx.bin", b"1")
    assert list(store.list_sizes("d")) == [("d/a.bin", 5), ("d/sub/b.bin", 0)]
    assert [k for k, _ in store.list_sizes("")] == list(store.list(""))
    assert store.is_dir("") and store.is_dir("d") and store.is_dir("d/sub")
    assert not store.is_dir("d/a.bin") and not store.is_dir("nothing") and not store.is_dir("d/su")
    assert not store.child("nothing").is_dir()


def test_a_store_reopens_from_its_spec_in_another_process(store):
    """What a process-pool worker or a DDP rank gets: a picklable spec carrying the S3 endpoint, not just the URI."""
    import pickle

    store.write_bytes("x/y.txt", b"hi")
    spec = store.reopen_spec()
    assert isinstance(spec, StoreURI) and spec.uri == store.uri
    again = open_store(pickle.loads(pickle.dumps(spec)))
    assert again.uri == store.uri and again.read_bytes("x/y.txt") == b"hi"
    if isinstance(store, S3Store):
        assert spec.s3_endpoint == store.endpoint_url is not None


def test_the_endpoint_travels_in_the_spec_not_the_environment(s3_root, s3_env, monkeypatch):
    store = open_store(s3_root, s3_endpoint=s3_env)
    store.write_bytes("k", b"1")
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # a worker whose environment does not name the endpoint
    assert open_store(store.reopen_spec()).read_bytes("k") == b"1"
    assert open_store(store.child("sub").reopen_spec()).uri == f"{s3_root}/sub"


def test_a_local_root_with_a_space_reopens_from_its_file_uri(tmp_path):
    store = open_store(str(tmp_path / "my root"))
    store.write_bytes("a", b"1")
    assert "%20" in store.uri and open_store(store.uri).path == store.path
    assert open_store(store.reopen_spec()).read_bytes("a") == b"1"


def test_split_uri_gives_the_parent_store_and_the_name(tmp_path, s3_bucket, monkeypatch):
    """The one parser for a URI naming one object (--resume, --pretrained, a SAM2 checkpoint, --out)."""
    s3, name = split_uri(f"s3://{s3_bucket}/models/sam2.pt")
    assert (s3.uri, name) == (f"s3://{s3_bucket}/models", "sam2.pt")
    assert split_uri(f"s3://{s3_bucket}/sam2.pt")[0].uri == f"s3://{s3_bucket}"
    folder, name = split_uri(f"s3://{s3_bucket}/models/")
    assert (folder.uri, name) == (f"s3://{s3_bucket}/models", "")  # a folder: no name
    assert split_uri(f"s3://{s3_bucket}")[1] == "" and not split_uri(f"s3://{s3_bucket}")[0].exists("")
    local, name = split_uri(f"file://{tmp_path}/ckpt/sam2.pt")
    assert (local.path, name) == ((tmp_path / "ckpt").resolve(), "sam2.pt")
    monkeypatch.chdir(tmp_path)
    assert (split_uri("sam2.pt")[0].path, split_uri("sam2.pt")[1]) == (tmp_path.resolve(), "sam2.pt")
    assert (split_uri("/sam2.pt")[0].path, split_uri("/sam2.pt")[1]) == (Path("/"), "sam2.pt")
    assert split_uri("ckpt/")[1] == "" and split_uri("ckpt/")[0].path == (tmp_path / "ckpt").resolve()
    with pytest.raises(StoreError, match="unsupported store URI scheme 'gs'"):
        split_uri("gs://bucket/x.pt")


def test_split_uri_carries_the_endpoint(s3_root, s3_env, monkeypatch):
    open_store(s3_root).write_bytes("w/x.pt", b"w")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    parent, name = split_uri(f"{s3_root}/w/x.pt", s3_env)
    assert parent.read_bytes(name) == b"w" and parent.reopen_spec().s3_endpoint == s3_env


def test_open_write_is_atomic_and_a_failed_write_leaves_the_old_object(store):
    store.write_bytes("atomic.bin", b"old")
    with store.open_write("atomic.bin") as fh:
        fh.write(b"new but")
        assert store.read_bytes("atomic.bin") == b"old"  # readers see the old object until close
        assert list(store.list("")) == ["atomic.bin"]  # no temporary file is listed
        fh.write(b" whole")
    assert store.read_bytes("atomic.bin") == b"new but whole"

    with pytest.raises(RuntimeError):
        with store.open_write("atomic.bin") as fh:
            fh.write(b"half")
            raise RuntimeError("writer died")
    assert store.read_bytes("atomic.bin") == b"new but whole"
    with pytest.raises(RuntimeError):
        with store.open_write("never.bin") as fh:
            fh.write(b"half")
            raise RuntimeError("writer died")
    assert not store.exists("never.bin")
    assert list(store.list("")) == ["atomic.bin"]


def test_concurrent_writers_leave_one_whole_object(store):
    blobs = [bytes([i]) * 200_000 for i in range(4)]

    def write(blob):
        store.write_bytes("race.bin", blob)

    threads = [threading.Thread(target=write, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read_bytes("race.bin") in blobs


@pytest.fixture
def small_multipart(monkeypatch):
    """Multipart from 5 MiB (the S3 minimum part size) instead of 64 MiB, so a test object of a few MiB uses it."""
    monkeypatch.setattr(
        store_module,
        "_transfer_config",
        lambda: TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_concurrency=2),
    )


def test_large_objects_go_multipart_and_stream_back(store, tmp_path, small_multipart):
    data = os.urandom(12 << 20)
    store.write_bytes("big/blob.bin", data)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    store.put_file(src, "big/file.bin")
    for key in ("big/blob.bin", "big/file.bin"):
        assert store.size(key) == len(data)
        digest, read = hashlib.sha256(), 0
        with store.open_read(key) as fh:  # streaming: 1 MiB at a time
            while chunk := fh.read(1 << 20):
                assert len(chunk) <= 1 << 20
                digest.update(chunk)
                read += len(chunk)
        assert read == len(data) and digest.digest() == hashlib.sha256(data).digest()
    out = tmp_path / "back.bin"
    store.get_file("big/file.bin", out)
    assert out.read_bytes() == data
    if isinstance(store, S3Store):
        client = boto3.client("s3", endpoint_url=store.endpoint_url)
        for key in ("big/blob.bin", "big/file.bin"):
            etag = client.head_object(Bucket=store.bucket, Key=join(store.prefix, key))["ETag"]
            assert etag.strip('"').endswith("-3"), etag  # three parts of 5, 5 and 2 MiB


def test_local_keys_cannot_escape_the_root(tmp_path):
    store = LocalStore(tmp_path / "root")
    with pytest.raises(StoreError, match="escapes the store root"):
        store.write_bytes("../outside.txt", b"x")
    assert not (tmp_path / "outside.txt").exists()


def test_open_store_chooses_the_backend_by_uri(tmp_path, s3_bucket, monkeypatch):
    assert isinstance(open_store(str(tmp_path / "p")), LocalStore)
    assert open_store(f"file://{tmp_path}/q").path == (tmp_path / "q").resolve()
    s3 = open_store(f"s3://{s3_bucket}/pre/fix/")
    assert isinstance(s3, S3Store) and s3.uri == f"s3://{s3_bucket}/pre/fix"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PLANKTON_ROOT", raising=False)
    assert open_store(None).path == (tmp_path / "artifacts").resolve()
    monkeypatch.setenv("PLANKTON_ROOT", str(tmp_path / "env"))
    assert open_store(None).path == (tmp_path / "env").resolve()
    with pytest.raises(StoreError, match="unsupported store URI scheme 'gs'"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="S3 URI needs a bucket"):
        open_store("s3:///x")


# --- S3 failures: one line, never a traceback -----------------------------------------------


def test_missing_bucket(s3_env):
    with pytest.raises(StoreError) as err:
        open_store("s3://no-such-bucket-plankton/x")
    assert str(err.value) == "bucket does not exist: s3://no-such-bucket-plankton"


@pytest.fixture
def s3_auth_on(s3_env, monkeypatch):
    """Make the moto server check credentials (it accepts any by default); 'testing' keys then match no user."""
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)


def test_bad_credentials(s3_bucket, s3_auth_on):
    with pytest.raises(StoreError) as err:
        open_store(f"s3://{s3_bucket}/x")
    assert str(err.value) == f"access denied to s3://{s3_bucket}: check the S3 credentials"


def test_credentials_failing_mid_run_are_store_errors_too(s3_bucket, monkeypatch):
    from moto import settings

    store = open_store(f"s3://{s3_bucket}/x")
    store.write_bytes("k", b"1")
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    for verb in (
        lambda: store.exists("k"),
        lambda: store.read_bytes("k"),
        lambda: store.write_bytes("k", b"2"),
        lambda: store.delete("k"),
        lambda: list(store.list("")),
    ):
        with pytest.raises(StoreError, match=r"access denied to s3://.*check the S3 credentials"):
            verb()


def test_no_credentials(s3_bucket, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(
        StoreError, match=r"^no S3 credentials for s3://.*: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY$"
    ):
        open_store(f"s3://{s3_bucket}/x")


def test_unreachable_endpoint(monkeypatch):
    """A refused connection is transient: retried ($PLANKTON_S3_MAX_ATTEMPTS), then one line and exit 75
    (the Job retries)."""
    from plankton_core.errors import TransientStoreError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("PLANKTON_S3_MAX_ATTEMPTS", "2")
    port = _closed_port()
    with pytest.raises(TransientStoreError) as err:
        open_store("s3://bucket/x", s3_endpoint=f"http://127.0.0.1:{port}")
    assert str(err.value).startswith(
        f"cannot reach S3 endpoint http://127.0.0.1:{port} for s3://bucket after 2 attempts: Could not connect"
    )
    assert err.value.exit_code == 75
    assert "\n" not in str(err.value)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- S3 throttling: how much SlowDown the default attempts ride out ---------------------------------------

SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


@pytest.fixture
def quick_backoff(monkeypatch) -> list[float]:
    """botocore's backoff computed at its mean (jitter 0.5) and recorded, but not slept, and the adaptive rate
    limiter's waits skipped: a test sees how long the attempts would ride out throttling, in no time."""
    from botocore.retries import bucket, standard

    asked: list[float] = []
    compute = standard.ExponentialBackoff.delay_amount

    def delay(self, context):
        self._random = lambda: 0.5
        asked.append(compute(self, context))
        return 0

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", delay)
    monkeypatch.setattr(bucket.TokenBucket, "acquire", lambda self, amount=1, block=True: True)
    monkeypatch.delenv(store_module.S3_ATTEMPTS_ENV, raising=False)
    return asked


def _slow_down(client, operation: str, times: int) -> list[int]:
    """The first `times` `operation` requests get 503 SlowDown (S3 throttling); later ones reach the server.
    Returns [requests answered SlowDown]."""
    from botocore.awsrequest import AWSResponse

    class Raw:
        def stream(self, **kwargs):
            yield SLOW_DOWN

    answered = [0]

    def reply(request, **kwargs):
        if answered[0] >= times:
            return None
        answered[0] += 1
        return AWSResponse(request.url, 503, {}, Raw())

    client.meta.events.register(f"before-send.s3.{operation}", reply)
    return answered


def test_default_attempts_ride_out_a_couple_of_minutes_of_slow_down(s3_root, quick_backoff):
    store = open_store(s3_root)
    store.write_bytes("x.bin", b"data")
    answered = _slow_down(store._client, "GetObject", 15)
    assert store.read_bytes("x.bin") == b"data" and answered == [15]

    quick_backoff.clear()
    answered = _slow_down(store._client, "HeadObject", 10_000)  # throttled for good: exit 75 in the end
    with pytest.raises(store_module.TransientStoreError) as err:
        store.exists("x.bin")
    attempts = store_module.S3_DEFAULT_ATTEMPTS
    assert answered == [attempts] and len(quick_backoff) == attempts - 1
    assert sum(quick_backoff) >= 120  # seconds of backoff on average before giving up
    assert err.value.exit_code == 75 and str(err.value).startswith(
        f"S3 check of {s3_root}/x.bin failed after {attempts} attempts: "
    )
    assert str(err.value).endswith("s ($PLANKTON_S3_MAX_ATTEMPTS allows more); retry later"), str(err.value)


def test_the_attempts_are_set_by_the_environment(s3_root, quick_backoff, monkeypatch):
    monkeypatch.setenv(store_module.S3_ATTEMPTS_ENV, "4")
    store = open_store(s3_root)
    store.write_bytes("x.bin", b"data")
    answered = _slow_down(store._client, "GetObject", 10_000)
    with pytest.raises(store_module.TransientStoreError, match=r"S3 read of .*/x\.bin failed after 4 attempts: "):
        store.read_bytes("x.bin")
    assert answered == [4]


def test_key_of_names_the_key_a_location_points_at(store):
    """Paths and URIs inside the store fold to their key (`..`, doubled slashes); anything elsewhere is None."""
    root = store.uri
    assert store.key_of(f"{root}/lut/gallery.parquet") == "lut/gallery.parquet"
    assert store.key_of(f"{root}/other/../lut//gallery.parquet") == "lut/gallery.parquet"
    assert store.key_of(f"{root}/../elsewhere/x.parquet") is None
    other = "s3://another-bucket/x.parquet" if root.startswith("file:") else "/tmp/x.parquet"
    assert store.key_of(other) is None
