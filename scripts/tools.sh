#!/usr/bin/env bash
# Programs the tests need that pip cannot install. On Debian as root they are installed
# from the distribution's packages; anywhere else this stops with one line saying what to install.
set -euo pipefail
missing=()
command -v promtool >/dev/null 2>&1 || missing+=("prometheus")   # promtool checks and unit-tests the alert rules
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages the tests need: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
echo "make test needs promtool: install Debian's prometheus package (sudo apt-get install prometheus) or put promtool on PATH" >&2
exit 1
