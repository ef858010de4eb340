#!/usr/bin/env bash
# `make check [STAGE=pkg]`: the quick loop, well under a minute — ruff and the format check over the tree,
# then the fast tier's tests of one package (tests/<pkg>/, or tests/test_<pkg>.py for a shared module).
# Without STAGE, the packages touched since the last commit (git diff) are tested.
set -euo pipefail
bin=${1:-.venv/bin} stage=${2:-}
"$bin/ruff" check plankton_core jobs tests bench scripts
"$bin/ruff" format --check --quiet plankton_core jobs tests bench scripts
if [ -z "$stage" ]; then
  stage=$(git diff --name-only HEAD -- plankton_core jobs | sed -n 's#^plankton_core/\([^/.]*\).*#\1#p; s#^jobs/\([^/.]*\)\.py#\1#p' \
    | sort -u | tr '\n' ' ')
fi
targets=()
for pkg in $stage; do
  pkg=${pkg//-/_}
  [ "$pkg" = "linear_sweep" ] && pkg=sweep
  if [ -d "tests/$pkg" ]; then targets+=("tests/$pkg")
  elif [ -f "tests/test_$pkg.py" ]; then targets+=("tests/test_$pkg.py")
  fi
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "check: ruff clean; no package tests to run (name one: make check STAGE=lut)"
  exit 0
fi
echo "check: fast tests of ${targets[*]}"
exec "$bin/python" -m pytest -q -x -m "not slow and not smoke" "${targets[@]}"
