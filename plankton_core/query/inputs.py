"""The images a query names: paths, folders, file:// or s3:// URIs, or keys and prefixes under the root."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

from ..imageio import IMAGE_SUFFIXES, is_image_key
from ..store import Store, split_uri


@dataclass
class ImageRef:
    name: str  # as the user named it (path or URI)
    read: Callable[[], bytes] | None  # None: nothing to read, see `missing`
    missing: str = "no such file, folder, key or prefix"


def resolve_inputs(args: Sequence[str], root: Store, s3_endpoint: str | None = None) -> list[ImageRef]:
    """Images named by paths, folders, file:// or s3:// URIs, or keys/prefixes under the root; sorted within each.

    A name that matches nothing still gets a reference (read=None), so it gets an error row in its place.
    """
    refs: list[ImageRef] = []
    for arg in args:
        found = list(_expand(arg, root, s3_endpoint))
        if not found and Path(arg).expanduser().is_dir():
            found = [ImageRef(arg, None, "a folder without images (" + ", ".join(IMAGE_SUFFIXES) + ")")]
        refs.extend(found or [ImageRef(arg, None)])
    return refs


def _expand(arg: str, root: Store, s3_endpoint: str | None) -> Iterator[ImageRef]:
    parsed = urlparse(arg)
    if parsed.scheme == "s3":
        store, key = split_uri(arg, s3_endpoint)
        yield from _from_store(store, key, lambda k: f"{store.uri}/{k}")
        return
    path = Path(parsed.path if parsed.scheme == "file" else arg).expanduser()
    if path.is_file():
        yield ImageRef(str(path), path.read_bytes)
        return
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file() and is_image_key(q.name)):
            yield ImageRef(str(p), p.read_bytes)
        return
    if parsed.scheme in ("", "file") and not os.path.isabs(arg):
        yield from _from_store(root, arg.strip("/"), lambda key: f"{root.uri}/{key}")


def _from_store(store: Store, key: str, name: Callable[[str], str]) -> Iterator[ImageRef]:
    if key and store.exists(key):
        yield ImageRef(name(key), partial(store.read_bytes, key))
        return
    for k in sorted(k for k in store.list(key) if is_image_key(k)):
        yield ImageRef(name(k), partial(store.read_bytes, k))
