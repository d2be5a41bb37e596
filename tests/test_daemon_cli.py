"""`xgrader run` argument handling (the daemon itself: test_daemon_supervisor.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from xgrader.cli.main import build_parser
from xgrader.cli.run import overrides_from
from xgrader.config import Settings


def test_flags_override_file_and_env(tmp_path, monkeypatch):
    cfg = tmp_path / "x.toml"
    cfg.write_text('concurrency = 4\njob_timeout_s = 9.0\nqueue_names = ["a"]\n')
    monkeypatch.setenv("XGRADER_JOB_TIMEOUT_S", "7")
    args = build_parser().parse_args(["run", "--config", str(cfg), "--queue", "b,c", "--max-attempts", "5"])
    s = Settings.load(args.config, **overrides_from(args))
    assert (s.concurrency, s.job_timeout_s, s.queue_names, s.max_attempts) == (4, 7.0, ["b", "c"], 5)


def test_unsafe_backend_refused_without_opt_in():
    env = {**os.environ, "XGRADER_SANDBOX": "unsafe", "XGRADER_LOG_FORMAT": "console"}
    proc = subprocess.run([sys.executable, "-m", "xgrader", "run"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unsandboxed" in (proc.stdout + proc.stderr)


def test_help_documents_environment():
    proc = subprocess.run([sys.executable, "-m", "xgrader", "run", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "XGRADER_QUEUE_URL" in proc.stdout and "XGRADER_JOB_TIMEOUT_S" in proc.stdout
