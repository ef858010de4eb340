"""One run of a stage per root at a time: a lease the second run finds and refuses on (exit 75, the Job retries).

The lease is the object `_leases/<name>` at the pipeline root (outside every stage prefix, so no stage's
listing or `delete_prefix` ever sees it). It holds who took it: run id, host, pid and start time.

- Local root: the file is locked with `flock` (LOCK_EX | LOCK_NB). The kernel drops the lock when the
  holder dies, even by SIGKILL, so a crashed run never blocks the next one. The holder unlinks the file on
  release while still holding the lock; a taker checks that the file it locked is still the one at the
  path, so an unlink racing an open never lets two runs hold it.
- S3 root: the lease object is created with a conditional write (`If-None-Match: *`), so of two runs
  exactly one creates it. The holder renews it every `ttl/4` seconds with `If-Match: <its ETag>`; a lease
  not renewed for `ttl` seconds (by the server's clock: its `Date` against the object's `Last-Modified`,
  so no host clock matters) is expired, and a new run takes it over with `If-Match` on the expired ETag,
  so of two runs taking over, one wins. A holder whose renewal finds another ETag has lost the lease and
  refuses to commit (exit 75).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import InterruptedRun, StageBusyError
from .store import LocalStore, S3Store, Store, join

LEASES = "_leases"
TTL_ENV = "PLANKTON_LEASE_TTL_S"
DEFAULT_TTL_S = 120.0
log = logging.getLogger("plankton.lease")


def lease_key(name: str) -> str:
    return join(LEASES, name.replace("/", "_"))


def lease_ttl() -> float:
    raw = os.environ.get(TTL_ENV, "")
    try:
        return max(float(raw), 1.0) if raw else DEFAULT_TTL_S
    except ValueError:
        return DEFAULT_TTL_S


def _holder(run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(timezone.utc).isoformat(),
    }


def _describe(what: str, root: Store, info: dict[str, Any], age_s: float | None) -> str:
    started = info.get("started")
    if age_s is None and started:
        with contextlib.suppress(ValueError):
            age_s = (datetime.now(timezone.utc) - datetime.fromisoformat(started)).total_seconds()
    age = f"{age_s:.0f}s" if age_s is not None else "unknown time"
    holder = info.get("run_id") or "unknown (starting)"
    return (
        f"{what} is already running on {root.uri}: run {holder} on host {info.get('host', '?')} "
        f"(pid {info.get('pid', '?')}) has held its lease for {age}; retry when it has finished"
    )


class Lease:
    """A held lease; `release()` (or leaving the `with` block) gives it back. `lost` turns true if taken away."""

    def __init__(self, root: Store, name: str, run_id: str):
        self.root, self.name, self.run_id = root, name, run_id
        self.key = lease_key(name)
        self.lost = False

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:  # pragma: no cover - overridden
        pass

    def check(self) -> None:
        """Raise InterruptedRun when the lease was taken over (the run must not commit)."""
        if self.lost:
            raise InterruptedRun(
                f"{self.name}: lost its lease {self.root.uri}/{self.key} (not renewed in time); "
                "nothing committed, rerun it"
            )


class LocalLease(Lease):
    def __init__(self, root: LocalStore, name: str, run_id: str, what: str):
        super().__init__(root, name, run_id)
        self.path: Path = root.path / self.key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise StageBusyError(_describe(what, root, self._read(), None)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder unlinked it between our open and our lock: take the new file
        self.fd: int | None = fd
        data = json.dumps(_holder(run_id)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_bytes() or b"{}")
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still locked: a waiting taker sees the inode change and reopens
        os.close(fd)
        self.fd = None


class S3Lease(Lease):
    def __init__(self, root: S3Store, name: str, run_id: str, what: str, ttl: float):
        super().__init__(root, name, run_id)
        self.store, self.ttl = root, ttl
        self.body = json.dumps({**_holder(run_id), "ttl_s": ttl}).encode()
        etag = root.put_if_absent(self.key, self.body)
        if etag is None:
            current = root.read_versioned(self.key)
            if current is None:  # released between our write and our read: one more try
                etag = root.put_if_absent(self.key, self.body)
            else:
                data, old_etag, age = current
                info = _json(data)
                if age <= float(info.get("ttl_s", ttl)):
                    raise StageBusyError(_describe(what, root, info, age))
                etag = root.put_if_match(self.key, self.body, old_etag)
                if etag is not None:
                    log.warning(
                        "%s: took over an expired lease of run %s on %s (not renewed for %.0fs)",
                        what,
                        info.get("run_id"),
                        info.get("host"),
                        age,
                    )
            if etag is None:
                raise StageBusyError(
                    _describe(what, root, _json((root.read_versioned(self.key) or (b"{}", "", 0.0))[0]), None)
                )
        self.etag = etag
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{name}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                etag = self.store.put_if_match(self.key, self.body, self.etag)
            except Exception as exc:  # a store outage: keep trying while the lease has not expired
                log.warning("could not renew the lease %s/%s: %s", self.store.uri, self.key, exc)
                continue
            if etag is None:
                self.lost = True
                log.error("the lease %s/%s was taken over: this run will not commit", self.store.uri, self.key)
                return
            self.etag = etag

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if self.lost:
            return
        try:
            self.store.delete_if_match(self.key, self.etag)
        except Exception:  # a store without conditional deletes: delete it if it is still ours
            with contextlib.suppress(Exception):  # an expired lease left behind is taken over later
                current = self.store.read_versioned(self.key)
                if current is not None and current[1] == self.etag:
                    self.store.delete(self.key)


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


def acquire(root: Store, name: str, run_id: str, what: str | None = None, ttl: float | None = None) -> Lease:
    """Take the lease `name` on `root` or raise StageBusyError (exit 75) naming the holder, its host and age."""
    what = what or name
    while not isinstance(root, LocalStore | S3Store) and getattr(root, "inner", None) is not None:
        root = root.inner  # type: ignore[attr-defined]  # a store wrapper (e.g. one recording writes)
    if isinstance(root, LocalStore):
        return LocalLease(root, name, run_id, what)
    if isinstance(root, S3Store):
        return S3Lease(root, name, run_id, what, ttl or lease_ttl())
    raise TypeError(f"no lease for a store of type {type(root).__name__}")
