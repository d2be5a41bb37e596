#!/usr/bin/env bash
# Installs everything xgrader needs on a fresh Debian 12 machine (root), idempotent.
#   scripts/setup.sh          the full set: tests, docker backend, hints store
#   scripts/setup.sh --local  only what the demo needs (bubblewrap sandbox)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-full}
packages=(bubblewrap python3 python3-pytest)
if [ "$mode" != "--local" ]; then
  packages+=(podman runc uidmap debootstrap redis-server libseccomp-dev chromium)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
# The demo needs the core only; the test suite also exercises every optional extra.
extras=dev,hints,redis,docker,postgres,images,mastery
[ "$mode" = "--local" ] && extras=dev,images
if ! "$PY" -c "import xgrader, pytest_timeout, hypothesis" 2>/dev/null || [ pyproject.toml -nt .cache/pip-stamp ]; then
  "$PY" -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v "Running pip as the 'root' user" || true
  mkdir -p .cache && touch .cache/pip-stamp
fi

# Each area's own setup step (sandbox environment, podman + images, redis...).
if [ "$mode" = "--local" ]; then
  areas=(scripts/setup-bwrap.sh scripts/setup-grading.sh)
else
  areas=(scripts/setup-*.sh)
fi
for s in "${areas[@]}"; do
  [ -f "$s" ] || continue
  echo "setup: $s"
  bash "$s"
done
