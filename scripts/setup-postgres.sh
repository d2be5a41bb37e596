#!/usr/bin/env bash
# The attempt ledger's PostgreSQL store is tested against a real server that
# the tests start themselves (initdb + pg_ctl in a temp dir, a free loopback
# port): only Debian's server binaries are needed, not a running service.
# psycopg (the client) comes with `pip install -e '.[dev]'`. Idempotent.
set -euo pipefail
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
# Debian starts the packaged cluster on install; the tests never use it.
/usr/lib/postgresql/15/bin/postgres --version
