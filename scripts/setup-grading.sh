#!/usr/bin/env bash
# Grading core: the test sandbox runs instructor tests with Debian's pytest
# (/usr/lib/python3/dist-packages, bound read-only with /usr by the bwrap
# backend). Idempotent; Debian 12, root.
set -euo pipefail

if ! dpkg-query -W -f='${Status}' python3-pytest 2>/dev/null | grep -q "install ok installed"; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq python3-pytest >/dev/null
fi
/usr/bin/python3 -c "import pytest" || { echo "setup-grading: /usr/bin/python3 cannot import pytest" >&2; exit 1; }
