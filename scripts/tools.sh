#!/usr/bin/env bash
# Programs that pip cannot install. On Debian as root they are installed from the distribution's
# packages; anywhere else this stops with one line saying what to install.
#   tools.sh        what `make test` needs (promtool, chromium)
#   tools.sh image  what `make image-test` needs (podman, runc, debootstrap)
set -euo pipefail
what=${1:-test}
missing=()
case "$what" in
  test)
    command -v promtool >/dev/null 2>&1 || missing+=("prometheus")   # promtool checks and unit-tests the alert rules
    command -v chromium >/dev/null 2>&1 || missing+=("chromium")     # opens report.html headless: every image decodes
    hint="make test needs promtool and chromium: install Debian's prometheus and chromium packages (sudo apt-get install prometheus chromium) or put them on PATH" ;;
  image)
    command -v podman >/dev/null 2>&1 || missing+=("podman")           # builds and runs the image (no daemon)
    command -v runc >/dev/null 2>&1 || missing+=("runc")               # the OCI runtime podman is told to use here
    command -v debootstrap >/dev/null 2>&1 || missing+=("debootstrap") # makes the local stand-in base image
    hint="make image-test needs podman, runc and debootstrap: sudo apt-get install podman runc debootstrap" ;;
  *) echo "tools.sh: unknown tool list '$what' (test or image)" >&2; exit 2 ;;
esac
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages ($what): ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
echo "$hint" >&2
exit 1
