#!/usr/bin/env bash
# deploy/ validation and the deployment smoke (tests/test_deploy.py,
# scripts/deploy-smoke): systemd-analyze (package systemd) checks the unit;
# kubernetes-validate and check-jsonschema come with `pip install -e '.[dev]'`
# (scripts/setup.sh); podman-compose >= 1.6 brings deploy/compose.yaml up
# (Debian 12's 1.0.3 is too old: it creates a missing engine socket as a
# directory, ignores profiles and has no --env-file). Idempotent; Debian 12, root.
set -euo pipefail

# systemd-analyze; python3-venv for the unit's install steps (tests/test_systemd_unit.py).
need=()
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
dpkg -s python3-venv >/dev/null 2>&1 || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
"$PY" -c "import kubernetes_validate, check_jsonschema" 2>/dev/null || \
  "$PY" -m pip install -q --disable-pip-version-check "kubernetes-validate>=1.30" "check-jsonschema>=0.29" 2>&1 \
  | grep -v "Running pip as the 'root' user" || true
if ! "$PY" -c 'from importlib.metadata import version as v; import sys; sys.exit(tuple(map(int, v("podman-compose").split(".")[:2])) < (1, 6))' 2>/dev/null; then
  "$PY" -m pip install -q --disable-pip-version-check "podman-compose>=1.6,<2" 2>&1 \
    | grep -vE "Running pip as the 'root' user|is ignored: it is neither a file nor a directory" || true
fi
"$PY" -c "import podman_compose" || { echo "setup-deploy: podman-compose did not install" >&2; exit 1; }
