# One image for every stage: ENTRYPOINT `plankton`, so `docker run IMAGE crop --root s3://…`
# and a Kubernetes Job's args are the stage and its options.
# Built by `make image` (tag, version and git commit filled in); linted by hadolint in the tests.
#
# CUDA-capable: the official PyTorch runtime image of the torch pinned in pyproject.toml
# (torch 2.14.1 built for CUDA 13.0 with cuDNN 9); the build stops if the two disagree.
# The GPU driver comes from the node (NVIDIA container toolkit).
# `make image-test` builds this same file on a local stand-in base (BASE_IMAGE: Debian bookworm
# with Python 3.11 from debootstrap) with WHEELHOUSE naming a folder of wheels mounted into the
# build, so pip installs torch and everything else from there and nothing is fetched.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG WHEELHOUSE=

# Only /tmp is written at run time (Jobs mount an emptyDir there, the root filesystem is
# read-only): home, caches and the decode cache all live under it.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/tmp/torch \
    PLANKTON_CACHE_DIR=/tmp/plankton-cache

WORKDIR /opt/plankton
# The pinned dependencies first, in a layer of their own: a change to the project's code rebuilds
# only the small layer after it. torch stays the base image's when it has the pinned one (the
# build stops if they differ); with WHEELHOUSE set, pip installs from that folder only.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(chr(10).join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && python -m pip install --no-cache-dir ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt \
 && python -c "import tomllib, torch; pin = next(d.split('==')[1] for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if d.startswith('torch==')); have = torch.__version__.split('+')[0]; assert have == pin, f'base image torch {have} != pinned {pin}'"

# Version and commit only after the dependencies' layer, so a new commit does not rebuild it
ARG BASE_IMAGE
ARG VERSION=0+unknown
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="plankton" \
      org.opencontainers.image.description="Plankton images to a SupCon feature extractor, a validated classifier and a FAISS look-up table" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
ENV PLANKTON_GIT_COMMIT=${GIT_COMMIT}

COPY README.md ./
COPY plankton_core ./plankton_core
COPY jobs ./jobs
RUN python -m pip install --no-cache-dir --no-deps ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} . \
 && plankton --help > /dev/null \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin plankton

USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["plankton"]
CMD ["--help"]
