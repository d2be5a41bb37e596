#!/usr/bin/env bash
# Builds the daemon image (Dockerfile) with podman, offline-capable: the
# wheels of xgrader and its dependencies are built on the host first
# (the host's pip index configuration applies) and the image installs only those.
#   scripts/build-daemon-image.sh [TAG]    env: BASE (default xgrader-base:bookworm), ENGINE,
#                                          EXTRAS (default hints,redis,docker,images; empty: the core only)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-xgrader:latest}
BASE=${BASE:-xgrader-base:bookworm}
ENGINE=${ENGINE:-podman}
EXTRAS=${EXTRAS-hints,redis,docker,images}
PY=${PYTHON:-python3}
# build/ is setuptools' staging folder: files left there by an older build would ship.
rm -rf .cache/wheels build
# Debian 12's python3 is 3.11.2: dependencies behind a `python_full_version <
# "3.11.3"` marker (redis -> async-timeout) are not picked by a newer host Python.
"$PY" -m pip wheel -q --disable-pip-version-check -w .cache/wheels ".${EXTRAS:+[$EXTRAS]}" "async-timeout>=4.0.3" 2>&1 \
  | grep -vE "Running pip as the 'root' user|is ignored: it is neither a file nor a directory" || true
ls .cache/wheels/xgrader-*.whl >/dev/null
rm -rf build
$ENGINE build -q --network=host --build-arg BASE="$BASE" --build-arg EXTRAS="$EXTRAS" -t "$TAG" -f Dockerfile . >/dev/null
echo "daemon image $TAG built FROM $BASE"
