#!/usr/bin/env bash
# Headless Chromium for the web-page tests (driven over the DevTools protocol
# through a pipe: tests/support/browser.py). Debian's package; idempotent.
set -euo pipefail
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
  echo "setup-chromium: installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
chromium --version 2>/dev/null | grep -q Chromium || { echo "setup-chromium: chromium does not run" >&2; exit 1; }
