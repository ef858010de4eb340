#!/usr/bin/env bash
# `make image-test`: build the image with podman from the project's Dockerfile on a local stand-in base,
# then run every stage from it the way the rendered Jobs run (scripts/image_run.py).
# Nothing is fetched inside the build: the base comes from debootstrap (scripts/image_base.sh), torch and
# every other dependency from a wheelhouse filled on the host (scripts/wheelhouse.sh), mounted read-only.
# Both are cached under $CACHE_DIR (outside the clone, so fresh clones on one machine share them), so a rerun rebuilds only the project's layer.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/plankton/image-test}
BIN=${BIN:-.venv/bin}
IMAGE=${IMAGE_TEST_TAG:-localhost/plankton:image-test}
BASE_TAG=${BASE_TAG:-localhost/plankton-base:bookworm-py311}
PODMAN=(podman --runtime runc)
export CACHE_DIR BASE_TAG

t0=$(date +%s)
bash scripts/image_base.sh
PIP=$BIN/pip PYTHON=$BIN/python bash scripts/wheelhouse.sh
t1=$(date +%s)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
echo "image-test: podman build of $IMAGE on $BASE_TAG (wheelhouse $CACHE_DIR/wheels mounted at /wheels)"
previous=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
"${PODMAN[@]}" build --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network none \
  --volume "$(cd "$CACHE_DIR/wheels" && pwd):/wheels:ro" \
  --build-arg BASE_IMAGE="$BASE_TAG" --build-arg WHEELHOUSE=/wheels \
  --build-arg VERSION="$version" --build-arg GIT_COMMIT="$commit" \
  -t "$IMAGE" . > "$CACHE_DIR/build.log" 2>&1 || { tail -30 "$CACHE_DIR/build.log" >&2; exit 1; }
t2=$(date +%s)
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
now=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$now" ]; then "${PODMAN[@]}" rmi "$previous" > /dev/null 2>&1 || true; fi  # the replaced build's layers
echo "image-test: built $IMAGE in $((t2 - t1))s (base + wheelhouse ready in $((t1 - t0))s); image size $((size / 1000000)) MB"
"$BIN/python" scripts/image_run.py --image "$IMAGE" --podman podman
t3=$(date +%s)
echo "image-test: passed in $((t3 - t0))s (build $((t2 - t1))s, runs $((t3 - t2))s)"
