#!/usr/bin/env bash
# Builds the grading image (default tag xgrader-grader:latest) FROM the
# locally imported base (scripts/setup-podman.sh makes xgrader-base:bookworm).
# Skips the build when an image with the same inputs already exists.
#   sandbox/image/build.sh [TAG]      env: BASE=<image> ENGINE=podman|docker
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-xgrader-grader:latest}
BASE=${BASE:-xgrader-base:bookworm}
ENGINE=${ENGINE:-podman}
PY=${PYTHON:-python3}

ctx=$(mktemp -d /var/tmp/xgrader-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp sandbox/image/Containerfile sandbox/image/apt-packages.txt sandbox/image/requirements.txt "$ctx/"
mkdir -p "$ctx/runner" "$ctx/site"
# The whole runner folder (sandbox/ but this image definition), as bwrap binds it.
for entry in sandbox/*; do
  [ "$(basename "$entry")" = image ] || cp -r "$entry" "$ctx/runner/"
done
find "$ctx/runner" \( -name __pycache__ -prune -o -name '*.pyc' \) -exec rm -rf {} +

# Pip packages from requirements.txt are installed on the host into site/
# (the image's Python is Debian 12's 3.11, like the host's) and copied in:
# the image needs neither pip nor network access to PyPI.
if grep -qvE '^\s*(#|$)' sandbox/image/requirements.txt; then
  "$PY" -m pip install -q --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 --implementation cp \
    --target "$ctx/site" -r sandbox/image/requirements.txt 2>&1 \
    | grep -vE "Running pip as the 'root' user|is ignored: it is neither a file nor a directory" || true
  [ -n "$(ls -A "$ctx/site")" ] || { echo "build.sh: no package from requirements.txt installed" >&2; exit 1; }
fi

# Identical inputs -> identical digest -> no rebuild.
digest=$( (echo "$BASE"; cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16)
runner_digest=$(PYTHONPATH=. "$PY" -c 'from xgrader.backends.docker_backend import runner_digest; print(runner_digest("sandbox"))')
if [ "$($ENGINE image inspect --format '{{index .Labels "xgrader.inputs"}}' "$TAG" 2>/dev/null || true)" = "$digest" ]; then
  echo "grading image $TAG up to date ($digest)"
  exit 0
fi
$ENGINE build -q --network=host --build-arg BASE="$BASE" \
  --label xgrader.inputs="$digest" --label xgrader.runner="$runner_digest" \
  -t "$TAG" -f "$ctx/Containerfile" "$ctx" >/dev/null
echo "grading image $TAG built ($digest)"
