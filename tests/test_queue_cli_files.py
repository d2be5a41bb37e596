"""`xgrader queue serve --user-file NAME:FILE` (logins from secret files, as
deploy/compose.yaml starts the queue) and `xgrader queue status --json` (what
scripts/deploy-smoke reads): the real CLI on a free loopback port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

from xgrader.daemon.demo_harness import Sample, free_port, login, submit, wait_http

REPO = Path(__file__).resolve().parents[1]


def serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XGRADER_QUEUE_SERVER_USERS"}
    proc = subprocess.Popen([sys.executable, "-m", "xgrader", "queue", "serve", "--port", str(port),
                             "--db", str(tmp_path / "q.db"), "--queue", "xgrader", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}/xqueue/"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def test_logins_from_secret_files(tmp_path):
    (tmp_path / "grader_pw").write_text("gr4d3r-pw-7q\n")    # as `openssl rand ... > file` writes it
    (tmp_path / "lms_pw").write_text("lms:with:colons-9z")
    proc, url = serve(tmp_path, "--user-file", f"xgrader:{tmp_path / 'grader_pw'}",
                      "--user-file", f"lms:{tmp_path / 'lms_pw'}")
    try:
        wait_http(url + "status/", 30, proc)
        login(requests.Session(), url, "xgrader", "gr4d3r-pw-7q")
        login(requests.Session(), url, "lms", "lms:with:colons-9z")
        refused = requests.post(url + "login/", data={"username": "xgrader", "password": "gr4d3r-pw-7q\n"},
                                timeout=10)
        assert json.loads(refused.text)["return_code"] == 1
        # No password on the command line nor in the environment.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().decode()
        assert all(pw not in text for pw in ("gr4d3r-pw-7q", "colons-9z") for text in (cmdline, environ))
    finally:
        stop(proc)


def test_bad_user_files_stop_with_one_line(tmp_path):
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "two_lines").write_text("a\nb\n")
    (tmp_path / "unreadable").write_text("pw")
    (tmp_path / "unreadable").chmod(0)
    cases = {
        f"xgrader:{tmp_path / 'missing'}": "cannot read",
        f"xgrader:{tmp_path / 'empty'}": "one line",
        f"xgrader:{tmp_path / 'two_lines'}": "one line",
        "no-colon": "NAME:FILE",
    }
    if os.geteuid() != 0:   # root reads a mode-0 file
        cases[f"xgrader:{tmp_path / 'unreadable'}"] = "cannot read"
    for spec, message in cases.items():
        proc, _url = serve(tmp_path, "--user-file", spec)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (spec, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("xgrader queue serve: ") and message in lines[0], (spec, err)


def test_status_json_has_every_submission_with_its_result_and_delivery(tmp_path):
    (tmp_path / "pw").write_text("pw")
    proc, url = serve(tmp_path, "--user-file", f"lms:{tmp_path / 'pw'}")
    try:
        wait_http(url + "status/", 30, proc)
        session = requests.Session()
        login(session, url, "lms", "pw")
        for key in ("a", "b"):
            submit(session, url, Sample(key=key, assignment="is_prime", name=key, student_response="x = 1\n"),
                   url + "lms-callback/", queue="xgrader")
        status = subprocess.run([sys.executable, "-m", "xgrader", "queue", "status", "--db", str(tmp_path / "q.db"),
                                 "--json"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["queues"] == [{"queue": "xgrader", "waiting": 2, "leased": 0, "answered": 0, "retired": 0,
                                   "delivered": 0, "delivery_failed": 0}]
        assert sorted(s["lms_key"] for s in data["submissions"]) == ["a", "b"]
        assert all(s["state"] == "pending" and s["result"] is None and s["delivery"] == "none"
                   for s in data["submissions"])
    finally:
        stop(proc)
