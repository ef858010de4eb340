#!/usr/bin/env bash
# Prints the path of a ruff of the pinned version, for `make lint` without the whole install:
# the project venv's if it has one, else one installed (once) into .tools/ — ruff alone, a few seconds.
set -euo pipefail
bin=${1:-.venv/bin} python=${2:-python3} version=${3:?ruff version}
for ruff in "$bin/ruff" .tools/bin/ruff; do
  if [ -x "$ruff" ] && [ "$("$ruff" --version | cut -d' ' -f2)" = "$version" ]; then
    echo "$ruff"
    exit 0
  fi
done
"$python" -m venv .tools >&2
.tools/bin/pip install --quiet "ruff==$version" >&2
echo .tools/bin/ruff
