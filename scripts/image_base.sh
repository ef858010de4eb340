#!/usr/bin/env bash
# The local stand-in for the production base image (pytorch/pytorch:…-runtime), used by `make image-test`
# because image registries cannot be reached here: Debian bookworm made with debootstrap from Debian's
# packages, with Python 3.11 and pip (like the PyTorch image, pip may install into the system Python),
# imported into podman as $BASE_TAG. torch is NOT in this base: the build installs the pinned torch from
# the wheelhouse (scripts/wheelhouse.sh). The root filesystem tarball is cached in $CACHE_DIR, so a rerun
# only imports it (or does nothing when podman already has the image).
set -euo pipefail
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/plankton/image-test}
BASE_TAG=${BASE_TAG:-localhost/plankton-base:bookworm-py311}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PODMAN=${PODMAN:-podman}
tarball="$CACHE_DIR/base-bookworm-py311.tar"

if $PODMAN image exists "$BASE_TAG"; then
  echo "base image $BASE_TAG: already in podman"; exit 0
fi
mkdir -p "$CACHE_DIR"
if [ ! -s "$tarball" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "debootstrap needs root: run as root, or put a root filesystem tarball at $tarball" >&2; exit 1; }
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/plankton-rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap: Debian bookworm minbase + python3.11 from $MIRROR (cached in $tarball)"
  debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates,passwd \
    bookworm "$rootfs" "$MIRROR" > "$CACHE_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/debootstrap.log" >&2; exit 1; }
  # the production base (conda Python) lets pip install system-wide; the stand-in does the same
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi
$PODMAN import --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "$tarball" "$BASE_TAG" > /dev/null
echo "base image $BASE_TAG: imported from $tarball"
