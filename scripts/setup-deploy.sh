#!/usr/bin/env bash
# deploy/ validation (tests/test_deploy.py): systemd-analyze (package systemd)
# checks the unit; kubernetes-validate and check-jsonschema come with
# `pip install -e '.[dev]'` (scripts/setup.sh). Idempotent; Debian 12, root.
set -euo pipefail

if ! command -v systemd-analyze >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
PY=${PYTHON:-python3}
"$PY" -c "import kubernetes_validate, check_jsonschema" 2>/dev/null || \
  "$PY" -m pip install -q --disable-pip-version-check "kubernetes-validate>=1.30" "check-jsonschema>=0.29" 2>&1 \
  | grep -v "Running pip as the 'root' user" || true
