"""One small interface over a local folder and S3-compatible object storage.

Only this module imports boto3 and only this module parses store URIs. Keys
are always '/'-separated and relative to the store's root, so stages never
care which backend they run on: the `Store` Protocol has every verb a caller
needs (atomic `open_write`, `list_sizes`, `local_path` for tools that want a
file), so nothing checks which backend it holds.

A store is reopened elsewhere (a process-pool worker, a DDP rank) from its
`reopen_spec()`: the URI plus the S3 endpoint, which a URI alone does not say.

Why boto3 and not pyarrow.fs or fsspec: the store needs few verbs, and boto3
gives them with botocore's standard retries, multipart uploads and streaming
reads, while the tests run against a real HTTP S3 (moto's server); pyarrow.fs
would add a second S3 client (its own retry and credential rules) for no new
verb, fsspec/s3fs a dependency tree on aiobotocore.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import posixpath
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol
from urllib.parse import unquote, urlparse

from .errors import StoreError, TransientStoreError

DEFAULT_ROOT = "./artifacts"
S3_ATTEMPTS_ENV = "PLANKTON_S3_MAX_ATTEMPTS"
# Attempts per S3 request, the first included. botocore waits rand(0, 1) × min(2^i s, 20 s) before retry i+1 after
# throttling (SlowDown) and a twentieth of that after a 5xx or a dropped connection: 20 attempts ride out about
# 2.5 min of SlowDown (about 2 min of 5xx) on average before exit 75 (docs/cluster.md); 10 gave about one.
S3_DEFAULT_ATTEMPTS = 20


class Listed(NamedTuple):
    """One entry of an input listing (`Store.list_inputs`).

    `version` says which content the entry has (local: mtime in ns; S3: the ETag), so a file rewritten
    with the same size changes the listing's fingerprint. `problem` is set on entries that must not be
    read (a symlink leaving the root, a loop, a dot or `..` entry, an odd name): the caller records them
    (e.g. as manifest rows) instead of reading them; `size` is 0 then.
    """

    key: str
    size: int
    version: str = ""
    problem: str = ""


@dataclass(frozen=True)
class StoreURI:
    """A store's URI and the S3 endpoint that reaches it: picklable, so a worker or DDP rank reopens the same store."""

    uri: str
    s3_endpoint: str | None = None


class Store(Protocol):
    """The verbs every stage uses; `uri` names the root for messages and run.json."""

    uri: str

    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def open_read(self, key: str) -> BinaryIO: ...
    def open_write(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A file to write `key` into; the object appears whole when the block ends, and not at all if it raises."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]: ...
    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size in bytes) of every object under `prefix`, in `list` order."""
        ...

    def list_inputs(self, prefix: str = "") -> Iterator[Listed]:
        """Every entry under `prefix` in `list` order, for input folders: (key, size, version, problem).

        Never follows a symlink out of the root or into a loop and never raises on an odd entry: such
        entries come back with `problem` set, so nothing is skipped silently.
        """
        ...

    def is_dir(self, prefix: str = "") -> bool:
        """A folder on disk; on S3 (which has no empty folders), a prefix with at least one object under it."""
        ...

    def local_path(self, key: str) -> AbstractContextManager[Path]:
        """A local file holding `key`, for tools that want a path (FAISS, SAM2, DuckDB); read it, do not write it."""
        ...

    def put_file(self, local_path: str | os.PathLike, key: str) -> None: ...
    def get_file(self, key: str, local_path: str | os.PathLike) -> None: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def size(self, key: str) -> int: ...
    def child(self, prefix: str) -> Store: ...
    def reopen_spec(self) -> StoreURI:
        """What `open_store` needs to open this store again in another process."""
        ...

    def key_of(self, location: str) -> str | None:
        """The key under this store that `location` (a path, file:// or s3:// URI) names, `..` folded; None
        when it lies elsewhere."""
        ...


def join(*parts: str) -> str:
    """Join key parts with '/', ignoring empty ones."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class LocalStore:
    """A folder on disk; writes go to a temporary file then `os.replace`, so readers never see half a file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        self.uri = self.path.as_uri()

    def _p(self, key: str) -> Path:
        # a lexical check, not Path.resolve(): resolving costs a syscall per path component on every read and write
        if not key:
            return self.path
        if key.startswith("/") or ".." in key.replace("\\", "/").split("/"):
            raise StoreError(f"key escapes the store root: {key!r}")
        return self.path / key

    def exists(self, key: str) -> bool:
        return self._p(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        with _local_errors("read", self._p(key)):
            try:
                return self._p(key).read_bytes()
            except FileNotFoundError:
                raise StoreError(f"not found in store: {self.uri}/{key}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as fh:
            fh.write(data)

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        target = self._p(key)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with _local_errors("write", target, disk_only=False):
                target.parent.mkdir(parents=True, exist_ok=True)
                fh = open(tmp, "wb")
            with _local_errors("write", target), fh:  # ENOSPC/EROFS from the caller's writes name the target
                yield fh
            with _local_errors("write", target, disk_only=False):
                os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()

    def open_read(self, key: str) -> BinaryIO:
        with _local_errors("read", self._p(key)):
            try:
                return open(self._p(key), "rb")
            except FileNotFoundError:
                raise StoreError(f"not found in store: {self.uri}/{key}") from None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._p(prefix)
        if base.is_file():
            yield prefix
            return
        if not base.is_dir():
            return
        yield from self._walk(base)

    def _walk(self, folder: Path) -> Iterator[str]:
        """Keys under `folder` sorted by the whole key, as S3 lists them, so both backends give the same order."""
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path))
            elif _is_file(entry) and not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                yield Path(entry.path).relative_to(self.path).as_posix()

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size in bytes) of every object under `prefix`, in `list` order."""
        for key in self.list(prefix):
            yield key, self._p(key).stat().st_size

    def list_inputs(self, prefix: str = "") -> Iterator[Listed]:
        """The input listing (see `Store.list_inputs`): symlinks are followed only to files inside the root."""
        base = self._p(prefix)
        if base.is_file() and not base.is_symlink():
            st = base.stat()
            yield Listed(prefix, st.st_size, str(st.st_mtime_ns))
            return
        if not base.is_dir():
            return
        yield from self._walk_inputs(base)

    def _walk_inputs(self, folder: Path) -> Iterator[Listed]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        except OSError as exc:
            yield Listed(self._rel(folder), 0, "", f"unlistable_folder: {exc.strerror or exc}")
            return
        for entry in entries:
            key = self._rel(Path(entry.path))
            odd = _odd_name(entry.name)
            if odd:
                yield Listed(key, 0, "", odd)
            elif entry.is_symlink():
                yield self._symlink_entry(entry, key)
            elif entry.is_dir(follow_symlinks=False):
                if entry.name.startswith("."):
                    yield Listed(key, 0, "", "hidden_folder: folders whose name starts with '.' are not read")
                else:
                    yield from self._walk_inputs(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    continue  # a store's own half-written file
                st = entry.stat(follow_symlinks=False)
                if entry.name.startswith("."):
                    yield Listed(key, 0, "", "hidden_file: files whose name starts with '.' are not read")
                else:
                    yield Listed(key, st.st_size, str(st.st_mtime_ns))
            else:
                yield Listed(key, 0, "", "not_a_file: a device, socket or pipe")

    def _symlink_entry(self, entry: os.DirEntry, key: str) -> Listed:
        """A symlink: read through only when it ends at a regular file inside the root."""
        try:
            target = Path(entry.path).resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports loops this way
            return Listed(key, 0, "", "symlink_loop: the link points back at itself")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return Listed(key, 0, "", "symlink_loop: the link points back at itself")
            return Listed(key, 0, "", "broken_symlink: the link points at nothing")
        if target.is_dir():  # wherever it points: a linked class folder is named for what it is
            return Listed(
                key, 0, "", "symlinked_folder: folders reached through a link are not read (loops, duplicates)"
            )
        if not target.is_relative_to(self.path):
            return Listed(key, 0, "", "symlink_outside_root: links out of the input folder are not followed")
        st = target.stat()
        if not stat.S_ISREG(st.st_mode):
            return Listed(key, 0, "", "not_a_file: the link points at a device, socket or pipe")
        return Listed(key, st.st_size, str(st.st_mtime_ns))

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix()

    def is_dir(self, prefix: str = "") -> bool:
        return self._p(prefix).is_dir()

    def put_file(self, local_path: str | os.PathLike, key: str) -> None:
        with open(local_path, "rb") as src, self.open_write(key) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def get_file(self, key: str, local_path: str | os.PathLike) -> None:
        with (
            self.open_read(key) as src,
            _local_errors("write", Path(local_path), disk_only=False),
            open(local_path, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)

    def delete(self, key: str) -> None:
        p = self._p(key)
        with _local_errors("delete", p, disk_only=False):
            if p.is_file():
                p.unlink()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many."""
        keys = list(self.list(prefix))
        for key in keys:
            with _local_errors("delete", self._p(key), disk_only=False):
                self._p(key).unlink(missing_ok=True)
        return len(keys)

    def size(self, key: str) -> int:
        try:
            return self._p(key).stat().st_size
        except FileNotFoundError:
            raise StoreError(f"not found in store: {self.uri}/{key}") from None

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """The file itself: no copy."""
        path = self._p(key)
        if not path.is_file():
            raise StoreError(f"not found in store: {self.uri}/{key}")
        yield path

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._p(prefix))

    def reopen_spec(self) -> StoreURI:
        return StoreURI(self.uri)

    def key_of(self, location: str) -> str | None:
        parsed = urlparse(location)
        if parsed.scheme not in ("", "file"):
            return None
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else location).expanduser().resolve()
        return path.relative_to(self.path).as_posix() if path.is_relative_to(self.path) else None


class S3Store:
    """`s3://bucket/prefix` through boto3 with standard retries, multipart uploads and streaming reads."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client or _make_client(self.endpoint_url)
        self._check_bucket()

    def _check_bucket(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        started = time.monotonic()
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise StoreError(
                f"no S3 credentials for {self.uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                raise StoreError(f"bucket does not exist: s3://{self.bucket}") from None
            if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                raise StoreError(f"access denied to s3://{self.bucket}: check the S3 credentials") from None
            if _is_transient(exc):
                raise TransientStoreError(
                    f"S3 check of s3://{self.bucket} failed after {s3_attempts()} attempts: {code}; {_gave_up(started)}"
                ) from None
            raise StoreError(f"cannot use s3://{self.bucket}: {code or exc}") from None
        except BotoCoreError as exc:
            if _is_transient(exc):
                raise TransientStoreError(
                    f"cannot reach S3 endpoint {self.endpoint_url or 'default'} for s3://{self.bucket} "
                    f"after {s3_attempts()} attempts: {_short(exc)}; {_gave_up(started)}"
                ) from None
            raise StoreError(f"cannot reach S3 endpoint {self.endpoint_url or 'default'}: {exc}") from None

    def _k(self, key: str) -> str:
        return join(self.prefix, key)

    def _errors(self, key: str, op: str = "access"):
        return _S3ErrorContext(self, key, op)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        if not self._k(key):
            return False  # the bucket itself is not an object
        with self._errors(key, "check"):  # other errors (403, endpoint gone) become one-line StoreErrors
            try:
                self._client.head_object(Bucket=self.bucket, Key=self._k(key))
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key, "write"):
            self._client.upload_fileobj(io.BytesIO(data), self.bucket, self._k(key), Config=_transfer_config())

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """Spool to a local temporary file and upload on close: S3 objects appear whole or not at all."""
        with tempfile.TemporaryFile() as tmp:
            yield tmp
            tmp.seek(0)
            with self._errors(key, "write"):
                self._client.upload_fileobj(tmp, self.bucket, self._k(key), Config=_transfer_config())

    def open_read(self, key: str) -> BinaryIO:
        with self._errors(key, "read"):
            obj = self._client.get_object(Bucket=self.bucket, Key=self._k(key))
        return obj["Body"]

    def list(self, prefix: str = "") -> Iterator[str]:
        for key, _ in self.list_sizes(prefix):
            yield key

    def _objects(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key relative to this store, listing entry) of every object under `prefix` (a key or a folder),
        page by page."""
        full = self._k(prefix)
        if full and not full.endswith("/") and not self.exists(prefix):
            full += "/"
        paginator = self._client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors(prefix, "list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield obj["Key"][strip:], obj

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size in bytes) of every object under `prefix`, from the listing itself (no HEAD per object)."""
        for key, obj in self._objects(prefix):
            yield key, int(obj["Size"])

    def list_inputs(self, prefix: str = "") -> Iterator[Listed]:
        """The input listing (see `Store.list_inputs`): keys with `.`/`..`/empty segments, dot names or
        backslashes come back with a problem instead of being read; folder markers (`…/`) are skipped."""
        for key, obj in self._objects(prefix):
            if key.endswith("/") and int(obj["Size"]) == 0:
                continue  # a folder marker some consoles create
            problem = _odd_key(key)
            if problem:
                yield Listed(key, 0, "", problem)
            else:
                yield Listed(key, int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))

    def is_dir(self, prefix: str = "") -> bool:
        full = self._k(prefix)
        with self._errors(prefix, "list"):
            reply = self._client.list_objects_v2(Bucket=self.bucket, Prefix=full + "/" if full else "", MaxKeys=1)
        return int(reply.get("KeyCount", 0)) > 0

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A temporary download (same suffix as the key, for tools that look at it), removed afterwards."""
        fd, tmp = tempfile.mkstemp(suffix=Path(key).suffix)
        os.close(fd)
        try:
            self.get_file(key, tmp)
            yield Path(tmp)
        finally:
            os.unlink(tmp)

    def put_file(self, local_path: str | os.PathLike, key: str) -> None:
        with self._errors(key, "write"):
            self._client.upload_file(str(local_path), self.bucket, self._k(key), Config=_transfer_config())

    def get_file(self, key: str, local_path: str | os.PathLike) -> None:
        with self._errors(key, "read"):
            self._client.download_file(self.bucket, self._k(key), str(local_path), Config=_transfer_config())

    def delete(self, key: str) -> None:
        with self._errors(key, "delete"):
            self._client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` in batches of 1,000 (one request each, not one per object)."""
        count = 0
        batch: list[dict[str, str]] = []
        with self._errors(prefix, "delete"):
            for key in self.list(prefix):
                batch.append({"Key": self._k(key)})
                if len(batch) == 1000:
                    count += self._delete_batch(batch)
                    batch = []
            if batch:
                count += self._delete_batch(batch)
        return count

    def _delete_batch(self, batch: builtins.list[dict[str, str]]) -> int:
        reply = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        if reply.get("Errors"):
            first = reply["Errors"][0]
            raise StoreError(
                f"S3 refused to delete {len(reply['Errors'])} object(s), e.g. {first.get('Key')}: {first.get('Code')}"
            )
        return len(batch)

    def size(self, key: str) -> int:
        with self._errors(key, "check"):
            return int(self._client.head_object(Bucket=self.bucket, Key=self._k(key))["ContentLength"])

    # conditional writes (S3's If-None-Match / If-Match): what a lease needs; None when the condition failed

    def put_if_absent(self, key: str, data: bytes) -> str | None:
        """Create `key` only if no object has it; its ETag, or None when one exists."""
        return self._conditional_put(key, data, IfNoneMatch="*")

    def put_if_match(self, key: str, data: bytes, etag: str) -> str | None:
        """Replace `key` only if it still has `etag`; the new ETag, or None when it changed or is gone."""
        return self._conditional_put(key, data, IfMatch=etag)

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        with self._errors(key, "write"):
            try:
                reply = self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, **condition)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _CONDITION_FAILED:
                    return None
                raise
        return str(reply["ETag"])

    def delete_if_match(self, key: str, etag: str) -> bool:
        """Delete `key` only if it still has `etag`; whether it did."""
        from botocore.exceptions import ClientError

        with self._errors(key, "delete"):
            try:
                self._client.delete_object(Bucket=self.bucket, Key=self._k(key), IfMatch=etag)
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _CONDITION_FAILED:
                    return False
                raise

    def read_versioned(self, key: str) -> tuple[bytes, str, float] | None:
        """(data, ETag, age in seconds by the server's clock) of `key`, or None when it does not exist."""
        from email.utils import parsedate_to_datetime

        from botocore.exceptions import ClientError

        with self._errors(key, "read"):
            try:
                obj = self._client.get_object(Bucket=self.bucket, Key=self._k(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            data = obj["Body"].read()
        server_now = obj.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(server_now) if server_now else None
        modified = obj["LastModified"]
        age = ((now - modified).total_seconds()) if now is not None else 0.0
        return data, str(obj["ETag"]), max(age, 0.0)

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, join(self.prefix, prefix), self.endpoint_url, client=self._client)

    def key_of(self, location: str) -> str | None:
        parsed = urlparse(location)
        if parsed.scheme != "s3" or parsed.netloc != self.bucket:
            return None
        parts = posixpath.normpath("/" + parsed.path).strip("/").split("/")
        base = self.prefix.split("/") if self.prefix else []
        return "/".join(parts[len(base) :]) if parts[: len(base)] == base else None

    def reopen_spec(self) -> StoreURI:
        return StoreURI(self.uri, self.endpoint_url)


_CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
}
_DENIED_CODES = ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken")


def _is_transient(exc: BaseException) -> bool:
    """A failure that may pass by itself: unreachable endpoint, timeout, dropped connection, throttling or a 5xx."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, ResponseStreamingError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _TRANSIENT_CODES or status >= 500 or (code.isdigit() and int(code) >= 500)
    return isinstance(exc, ConnectionError | HTTPClientError | ResponseStreamingError)


class _S3ErrorContext:
    """Turns botocore errors into one-line StoreErrors naming the operation and the object.

    Transient failures (after botocore's own retries) raise TransientStoreError (exit 75: the Job retries
    later); missing objects, denied access and other client errors stay StoreError (exit 2).
    """

    def __init__(self, store: S3Store, key: str, op: str = "access"):
        self.store, self.key, self.op = store, key, op

    def __enter__(self):
        self.started = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb):
        from botocore.exceptions import BotoCoreError, ClientError

        if exc is None:
            return False
        where = f"{self.store.uri}/{self.key}"
        if isinstance(exc, (BotoCoreError, ClientError)) and _is_transient(exc):
            raise TransientStoreError(
                f"S3 {self.op} of {where} failed after {s3_attempts()} attempts: {_short(exc)}; "
                + _gave_up(self.started)
            ) from None
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise StoreError(f"not found in store: {where}") from None
            if code in _DENIED_CODES:
                raise StoreError(f"access denied to {where} ({code}): check the S3 credentials") from None
            if code == "NoSuchBucket":
                raise StoreError(f"bucket does not exist: s3://{self.store.bucket}") from None
            raise StoreError(f"S3 {self.op} of {where} failed: {code or exc}") from None
        if isinstance(exc, BotoCoreError):
            raise StoreError(f"S3 {self.op} of {where} failed: {_short(exc)}") from None
        return False


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _gave_up(started: float) -> str:
    """The end of an exit-75 line: how long botocore retried, and the knob for longer."""
    return f"retried for {time.monotonic() - started:.0f} s (${S3_ATTEMPTS_ENV} allows more); retry later"


def s3_attempts() -> int:
    """Attempts per S3 request (the first try included): $PLANKTON_S3_MAX_ATTEMPTS, default S3_DEFAULT_ATTEMPTS."""
    raw = os.environ.get(S3_ATTEMPTS_ENV, "")
    try:
        value = int(raw) if raw else S3_DEFAULT_ATTEMPTS
    except ValueError:
        raise StoreError(f"${S3_ATTEMPTS_ENV} must be a whole number of attempts, got {raw!r}") from None
    if value < 1:
        raise StoreError(f"${S3_ATTEMPTS_ENV} must be at least 1, got {value}")
    return value


def _make_client(endpoint_url: str | None):
    import boto3
    from botocore.config import Config

    # adaptive: standard retries (exponential backoff with jitter on connection errors, timeouts, 5xx and
    # throttling) plus client-side rate limiting when the server throttles
    cfg = Config(
        retries={"total_max_attempts": s3_attempts(), "mode": "adaptive"}, connect_timeout=10, read_timeout=120
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=cfg)


_DISK_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EROFS: "read-only file system",
    errno.EDQUOT: "disk quota exceeded",
}
_ACCESS_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


@contextmanager
def _local_errors(op: str, path: Path, disk_only: bool = True) -> Iterator[None]:
    """OSErrors of a local store as one-line StoreErrors naming the path (disk full, read-only, no permission).

    `disk_only` leaves other OSErrors alone: around a caller's block, only a full or read-only disk is
    certainly ours.
    """
    try:
        yield
    except StoreError:
        raise
    except OSError as exc:
        known = _DISK_ERRNOS.get(exc.errno or 0) or _ACCESS_ERRNOS.get(exc.errno or 0)
        if known is None and disk_only:
            raise
        raise StoreError(f"cannot {op} {path}: {known or exc.strerror or exc}") from None


def _is_file(entry: os.DirEntry) -> bool:
    """A regular file (or a link to one); a link loop is not (input listings record it: `list_inputs`)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _odd_name(name: str) -> str:
    """Why a file or folder name is not read as input ('' when it is fine)."""
    if "\\" in name:
        return "odd_name: a backslash in the name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "odd_name: the name is not valid UTF-8"
    if any(ord(c) < 32 for c in name):
        return "odd_name: a control character in the name"
    return ""


def _odd_key(key: str) -> str:
    """Why an S3 key is not read as input ('' when it is fine)."""
    parts = key.split("/")
    if any(p == "" for p in parts):
        return "odd_name: an empty segment ('//') in the key"
    if any(p in (".", "..") for p in parts):
        return "odd_name: a '.' or '..' segment in the key"
    if any(p.startswith(".") for p in parts):
        return "hidden_file: names starting with '.' are not read"
    return next((why for why in map(_odd_name, parts) if why), "")


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, max_concurrency=4)


def open_store(uri: str | StoreURI | None = None, s3_endpoint: str | None = None) -> LocalStore | S3Store:
    """A store for `uri`: `s3://bucket/prefix`, `file:///path`, a plain path (default `./artifacts`), or a
    `StoreURI` from `reopen_spec()` (its endpoint is used)."""
    if isinstance(uri, StoreURI):
        return open_store(uri.uri, uri.s3_endpoint)
    bucket, path = _parse(uri or os.environ.get("PLANKTON_ROOT") or DEFAULT_ROOT)
    return LocalStore(path) if bucket is None else S3Store(bucket, path, endpoint_url=s3_endpoint)


def split_uri(uri: str, s3_endpoint: str | None = None) -> tuple[LocalStore | S3Store, str]:
    """(store of the parent folder, last name) of a path, file:// or s3:// URI of one object or prefix.

    The name is '' when the URI names a folder ('…/') or a bucket: a caller that needs one file says so.
    """
    bucket, path = _parse(uri)
    if bucket is not None:
        parent, _, name = path.rpartition("/")
        return S3Store(bucket, parent, endpoint_url=s3_endpoint), name
    path = os.path.expanduser(path)
    if path.endswith(("/", os.sep)):
        return LocalStore(path), ""
    parent, name = os.path.split(os.path.abspath(path))
    return LocalStore(parent), name


def _parse(uri: str) -> tuple[str | None, str]:
    """(bucket, key path) of an s3:// URI; (None, local path) of a file:// URI or a plain path."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"S3 URI needs a bucket: {uri}")
        return parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme == "file":
        return None, unquote(parsed.path)  # Path.as_uri() quotes spaces and '%'
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise StoreError(f"unsupported store URI scheme {parsed.scheme!r} in {uri}: use a path, file:// or s3://")
    return None, uri
