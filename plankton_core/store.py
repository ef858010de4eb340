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
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from .errors import StoreError

DEFAULT_ROOT = "./artifacts"


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
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                yield fh
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()

    def open_read(self, key: str) -> BinaryIO:
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
            elif entry.is_file() and not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                yield Path(entry.path).relative_to(self.path).as_posix()

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size in bytes) of every object under `prefix`, in `list` order."""
        for key in self.list(prefix):
            yield key, self._p(key).stat().st_size

    def is_dir(self, prefix: str = "") -> bool:
        return self._p(prefix).is_dir()

    def put_file(self, local_path: str | os.PathLike, key: str) -> None:
        with open(local_path, "rb") as src, self.open_write(key) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def get_file(self, key: str, local_path: str | os.PathLike) -> None:
        with self.open_read(key) as src, open(local_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def delete(self, key: str) -> None:
        p = self._p(key)
        if p.is_file():
            p.unlink()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many."""
        keys = list(self.list(prefix))
        for key in keys:
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

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise StoreError(f"no S3 credentials for {self.uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                raise StoreError(f"bucket does not exist: s3://{self.bucket}") from None
            if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                raise StoreError(f"access denied to s3://{self.bucket}: check the S3 credentials") from None
            raise StoreError(f"cannot use s3://{self.bucket}: {code or exc}") from None
        except BotoCoreError as exc:
            raise StoreError(f"cannot reach S3 endpoint {self.endpoint_url or 'default'}: {exc}") from None

    def _k(self, key: str) -> str:
        return join(self.prefix, key)

    def _errors(self, key: str):
        return _S3ErrorContext(self, key)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        if not self._k(key):
            return False  # the bucket itself is not an object
        with self._errors(key):  # other errors (403, endpoint gone) become one-line StoreErrors
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
        with self._errors(key):
            self._client.upload_fileobj(io.BytesIO(data), self.bucket, self._k(key), Config=_transfer_config())

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """Spool to a local temporary file and upload on close: S3 objects appear whole or not at all."""
        with tempfile.TemporaryFile() as tmp:
            yield tmp
            tmp.seek(0)
            with self._errors(key):
                self._client.upload_fileobj(tmp, self.bucket, self._k(key), Config=_transfer_config())

    def open_read(self, key: str) -> BinaryIO:
        with self._errors(key):
            obj = self._client.get_object(Bucket=self.bucket, Key=self._k(key))
        return obj["Body"]

    def list(self, prefix: str = "") -> Iterator[str]:
        for key, _ in self.list_sizes(prefix):
            yield key

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size in bytes) of every object under `prefix`, from the listing itself (no HEAD per object)."""
        full = self._k(prefix)
        if full and not full.endswith("/") and not self.exists(prefix):
            full += "/"
        paginator = self._client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._errors(prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield obj["Key"][strip:], int(obj["Size"])

    def is_dir(self, prefix: str = "") -> bool:
        full = self._k(prefix)
        with self._errors(prefix):
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
        with self._errors(key):
            self._client.upload_file(str(local_path), self.bucket, self._k(key), Config=_transfer_config())

    def get_file(self, key: str, local_path: str | os.PathLike) -> None:
        with self._errors(key):
            self._client.download_file(self.bucket, self._k(key), str(local_path), Config=_transfer_config())

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` in batches of 1,000 (one request each, not one per object)."""
        count = 0
        batch: list[dict[str, str]] = []
        with self._errors(prefix):
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
            raise StoreError(f"S3 refused to delete {len(reply['Errors'])} object(s), e.g. {first.get('Key')}: {first.get('Code')}")
        return len(batch)

    def size(self, key: str) -> int:
        with self._errors(key):
            return int(self._client.head_object(Bucket=self.bucket, Key=self._k(key))["ContentLength"])

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, join(self.prefix, prefix), self.endpoint_url, client=self._client)

    def reopen_spec(self) -> StoreURI:
        return StoreURI(self.uri, self.endpoint_url)


class _S3ErrorContext:
    """Turns botocore errors into one-line StoreErrors naming the object."""

    def __init__(self, store: S3Store, key: str):
        self.store, self.key = store, key

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from botocore.exceptions import BotoCoreError, ClientError

        if exc is None:
            return False
        where = f"{self.store.uri}/{self.key}"
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise StoreError(f"not found in store: {where}") from None
            if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken"):
                raise StoreError(f"access denied to {where} ({code}): check the S3 credentials") from None
            raise StoreError(f"S3 error on {where}: {code or exc}") from None
        if isinstance(exc, BotoCoreError):
            raise StoreError(f"S3 error on {where}: {exc}") from None
        return False


def _make_client(endpoint_url: str | None):
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=10, read_timeout=120)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=cfg)


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
