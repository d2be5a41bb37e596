#!/usr/bin/env bash
# The hint store's Redis backend is tested against a real redis-server that the
# tests start themselves (free loopback port, temp dir, no persistence): only
# the binary is needed, not a running service. Idempotent.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server >/dev/null
fi
# Debian starts the packaged service on install; the tests never use it.
redis-server --version | head -1
