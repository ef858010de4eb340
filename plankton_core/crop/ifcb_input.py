"""crop `--input` holding IFCB raw bins: each bin's images become ordinary input images of its class folder.

`IfcbSource` wraps the input store: its listing shows, in place of a bin's `.hdr/.adc/.roi`, one entry per image,
`<class>/<bin>_<roi, 5 digits>.png` (its version joins the three files' versions, so an edit to any of them is
seen), and reading such a key gives that image's pixels exactly as stored (as PNG bytes, which decode to them).
A bin that cannot be read whole is one entry with a problem (an unreadable manifest row naming the file and the
reason). Every other key passes through untouched, so the crop stage lists, fingerprints, shards and crops bins
as it does images.

Each image also has a pixel size (`pixel_size_um`): the IFCB's standard calibration (`ifcb.STANDARD_PIXEL`,
ifcb-analysis' 3.4 pixels per µm, since IFCB headers record none), so crop's morphometric features get their µm
copies; `--pixel-size-um` wins over it, as over an EcoTaxa row's columns.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .. import ifcb
from ..ecotaxa import reopen
from ..imageio import encode_png
from ..store import Listed, Store, StoreURI

VIRTUAL = re.compile(r"^(?P<dir>(?:.*/)?)(?P<bin>[^/]+)_(?P<roi>\d{5})\.png$")


@dataclass(frozen=True)
class IfcbSpec:
    """What a worker process needs to reopen an `IfcbSource`."""

    inner: StoreURI | Any

    def reopen(self) -> IfcbSource:
        return IfcbSource(reopen(self.inner))


class IfcbSource:
    """A store whose IFCB bins read as one PNG per image (see the module doc)."""

    def __init__(self, inner: Store):
        self.inner = inner
        self.uri = inner.uri
        self._bins: dict[str, tuple[ifcb.BinRef, str]] = {}  # "<dir>/<bin>" -> (ref, joined version)
        self._cached: tuple[str, dict[int, bytes]] | None = None  # the last bin read: its images as PNG

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def reopen_spec(self) -> IfcbSpec:
        return IfcbSpec(self.inner.reopen_spec())

    def list_inputs(self, prefix: str = "") -> Iterator[Listed]:
        entries = list(self.inner.list_inputs(prefix))
        refs = {r.key: r for r in ifcb.group_bins(e.key for e in entries if not e.problem)}
        versions = {e.key: e.version for e in entries}
        emitted: set[str] = set()
        for entry in entries:
            base = entry.key.rpartition(".")[0]
            ref = refs.get(base)
            if ref is None or entry.problem:
                yield entry
            elif base not in emitted:
                emitted.add(base)
                yield from self._bin_entries(ref, versions)

    def _bin_entries(self, ref: ifcb.BinRef, versions: dict[str, str]) -> Iterator[Listed]:
        version = "|".join(versions.get(k or "", "") for k in ref.keys.values())
        key = ref.keys.get("roi") or ref.key + ".roi"
        try:
            b = ifcb.read_bin(self.inner, ref)
        except ifcb.BadBin as exc:
            yield Listed(key, 0, version, f"ifcb_bad_bin: {exc}")
            return
        folder = ref.key.rpartition("/")[0]
        self._bins[ref.key] = (ref, version)
        for roi in b.rois:
            yield Listed(f"{folder}/{b.object_id(roi)}.png" if folder else f"{b.object_id(roi)}.png", 0, version)

    def _images(self, base: str) -> dict[int, bytes]:
        if self._cached is None or self._cached[0] != base:
            ref = self._bins.get(base) or (self._find(base), "")
            b = ifcb.read_bin(self.inner, ref[0])
            self._cached = (base, {roi.number: encode_png(arr) for roi, arr in ifcb.images(self.inner, b)})
        return self._cached[1]

    def _find(self, base: str) -> ifcb.BinRef:
        folder = base.rpartition("/")[0]
        for ref in ifcb.list_bins(self.inner, folder):
            if ref.key == base:
                return ref
        raise ifcb.BadBin(base, "no such bin")

    def read_bytes(self, key: str) -> bytes:
        m = VIRTUAL.match(key)
        if m is None or not ifcb.is_bin_name(m["bin"]):
            return self.inner.read_bytes(key)
        try:
            return self._images(f"{m['dir']}{m['bin']}")[int(m["roi"])]
        except (ifcb.BadBin, KeyError) as exc:
            from ..imageio import UnreadableImage

            raise UnreadableImage("ifcb_bad_bin", str(exc)) from None

    def pixel_size_um(self, key: str) -> float:
        """µm per pixel of the image at `key`: the IFCB's standard one for a bin's image, 0 (unknown) otherwise."""
        m = VIRTUAL.match(key)
        return ifcb.STANDARD_PIXEL.um if m is not None and ifcb.is_bin_name(m["bin"]) else 0.0

    def pixel_note(self, override_um: float) -> str | None:
        """The run's note on the bins' pixel size (None without a bin listed): the standard one and its source, or
        the `--pixel-size-um` given (`override_um`) that replaces it."""
        if not self._bins:
            return None
        if override_um:
            return f"IFCB pixel size {override_um:g} µm (--pixel-size-um)"
        pixel = ifcb.STANDARD_PIXEL
        return f"IFCB pixel size {pixel.um:.3f} µm ({pixel.source})"

    def exists(self, key: str) -> bool:
        m = VIRTUAL.match(key)
        return self.inner.exists(key) or bool(m and ifcb.is_bin_name(m["bin"]))


def wrap(source: Any) -> Any:
    """`source` as an IfcbSource when it holds an IFCB bin, else unchanged."""
    if not hasattr(source, "list_inputs") or not ifcb.group_bins(e.key for e in source.list_inputs("")):
        return source
    return IfcbSource(source)
