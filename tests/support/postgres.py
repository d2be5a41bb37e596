"""A throwaway PostgreSQL server for the session (Debian's postgresql
binaries, initdb + pg_ctl, a free loopback port, a temp dir, fsync off), and
a fresh database per test (`pg_url`). As root, the cluster runs as the
`postgres` user (or `nobody`): PostgreSQL refuses to run as root."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("XGRADER_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    raise RuntimeError("running as root with no postgres or nobody user to run PostgreSQL as")


@pytest.fixture(scope="session")
def postgres_server():
    """postgresql://xgrader@127.0.0.1:PORT (trust auth, loopback only)."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(f"{PG_BIN}/initdb missing: scripts/setup-postgres.sh installs Debian's postgresql")
    base = Path(tempfile.mkdtemp(prefix="xgrader-pg-"))
    data = base / "data"
    runas = _as_user()
    if runas:
        user = pwd.getpwnam(runas[2])
        os.chown(base, user.pw_uid, user.pw_gid)
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    subprocess.run([*runas, str(PG_BIN / "initdb"), "-D", str(data), "-U", "xgrader", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, env=env, timeout=120)
    opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
    subprocess.run([*runas, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "log"),
                    "-w", "-t", "60", "start"], check=True, capture_output=True, env=env, timeout=90)
    try:
        yield f"postgresql://xgrader@127.0.0.1:{port}"
    finally:
        subprocess.run([*runas, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, env=env, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's server."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"
