#!/usr/bin/env bash
# Fill the wheelhouse that `make image-test` builds the image from, on the host, with the host's pip
# (its index settings: on this machine torch 2.14.1/torchvision 0.29.1 come from the local disk index).
# Every pinned dependency of pyproject.toml as a wheel for the image's Python (3.11, manylinux x86_64),
# plus setuptools and wheel for building the project itself, so the build needs no network.
# Cached: a rerun with the same dependency list does nothing.
set -euo pipefail
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/plankton/image-test}
PIP=${PIP:-.venv/bin/pip}
PYTHON=${PYTHON:-.venv/bin/python}
out="$CACHE_DIR/wheels"
mkdir -p "$CACHE_DIR"
reqs="$CACHE_DIR/requirements.txt"
$PYTHON - > "$reqs.new" <<'PY'
import tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    print(dep)
print("setuptools>=68")
print("wheel")
PY
if [ -f "$out/.complete" ] && cmp -s "$reqs.new" "$reqs"; then
  rm -f "$reqs.new"; echo "wheelhouse $out: up to date ($(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1))"; exit 0
fi
mv "$reqs.new" "$reqs"
rm -rf "$out"; mkdir -p "$out"
echo "wheelhouse: pip wheel of $(wc -l < "$reqs") requirements into $out (cached)"
# `pip wheel` copies existing wheels and builds any sdist-only dependency into a wheel here, on the host
$PIP wheel --quiet --wheel-dir "$out" -r "$reqs" > "$CACHE_DIR/wheelhouse.log" 2>&1 || { tail -20 "$CACHE_DIR/wheelhouse.log" >&2; exit 1; }
touch "$out/.complete"
echo "wheelhouse $out: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1)"
