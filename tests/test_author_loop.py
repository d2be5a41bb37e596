"""The README's author loop, as a user runs it: `xgrader demo --keep` on a
copy of examples/author_loop (queue server and daemon left running), the
dashboard, `xgrader mutants` showing the survivors of the weak test file,
the fixed test file, `xgrader regrade` (dry run, then --deliver), and the
new score delivered once and shown on the dashboard."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def xgrader(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xgrader", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_demo_dashboard_mutants_fix_regrade(tmp_path):
    loop = tmp_path / "loop"
    shutil.copytree(ROOT / "examples" / "author_loop", loop)
    handlers = loop / "handlers"
    demo = xgrader("demo", "--keep", "--handlers", str(handlers))
    pids = [int(p) for p in re.findall(r"stop them with: kill (\d+) (\d+)", demo.stdout)[0]] if "kill" in demo.stdout else []
    try:
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert re.search(r"wrong_boundary\.py\s+letter_grade\s+10/10\s+correct", demo.stdout)  # the weak tests miss it
        config = Path(re.search(r"--config (\S+)", demo.stdout).group(1))
        dashboard = re.search(r"dashboard: (\S+)", demo.stdout).group(1)
        password = (config.parent / "password").read_text()

        # the dashboard: log in, find the wrong submission's full feedback
        s = requests.Session()
        base = dashboard.rsplit("dashboard/", 1)[0]
        s.post(base + "login/", data={"username": "xgrader", "password": password}, timeout=10)
        listing = s.get(dashboard, params={"assignment": "letter_grade", "result": "incorrect"}, timeout=10).text
        assert listing.count("data-id=") == 2        # wrong_order, wrong_no_check
        ids = dict(re.findall(r"data-id='(\d+)'.*?demo-(wrong_\w+)\.py", listing, re.S))
        assert set(ids.values()) == {"wrong_order", "wrong_no_check"}
        sid = next(k for k, v in ids.items() if v == "wrong_order")
        detail = s.get(base + f"submission/{sid}/", timeout=10).text
        assert "Feedback as the student sees it" in detail and "id='staff-tests'" in detail
        boundary_sid = re.search(r"data-id='(\d+)'.*?demo-wrong_boundary\.py",
                                 s.get(dashboard, params={"student": "demo-wrong_boundary.py"}, timeout=10).text,
                                 re.S).group(1)

        # mutation testing shows the weak test file
        weak = xgrader("mutants", "--handlers", str(handlers), "letter_grade")
        assert "SURVIVED" in weak.stdout and "`>=` -> `>`" in weak.stdout, weak.stdout + weak.stderr

        # fix the test, dry run, then deliver
        shutil.copy(loop / "fixed" / "test_letter_grade.py", handlers / "letter_grade" / "tests" / "test_letter_grade.py")
        dry = xgrader("regrade", "--config", str(config), "--assignment", "letter_grade")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        row = next(line for line in dry.stdout.splitlines() if "demo-wrong_boundary.py" in line)
        assert "10/10" in row and "down" in row
        assert "dry run" in dry.stdout
        db = config.parent / "queue.db"
        before = _result(db, boundary_sid)
        assert before["score"] == 10

        done = xgrader("regrade", "--config", str(config), "--assignment", "letter_grade", "--deliver", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        rows = {r["student"]: r for r in json.loads(done.stdout)["rows"]}
        new = rows["demo-wrong_boundary.py"]["new_score"]
        assert new < 10 and rows["demo-wrong_boundary.py"]["delivered"].startswith("posted")
        assert rows["demo-correct.py"]["delivered"].startswith("recorded (score unchanged")
        end = time.monotonic() + 30
        while time.monotonic() < end and _delivery(db, boundary_sid) != "delivered":
            time.sleep(0.2)
        assert _delivery(db, boundary_sid) == "delivered"
        assert _result(db, boundary_sid)["score"] == new
        with sqlite3.connect(db) as conn:
            oks = conn.execute("SELECT count(*) FROM delivery_attempts WHERE submission_id=? AND ok=1",
                               (int(boundary_sid),)).fetchone()[0]
        assert oks == 2                          # the first result and the regrade's, once each
        page = s.get(base + f"submission/{boundary_sid}/", timeout=10).text
        assert "id='regrades'" in page and "regrade of #" in page

        history = xgrader("history", "--config", str(config), "--student", "demo-wrong_boundary.py", "--json")
        scores = [json.loads(line)["score"] for line in history.stdout.splitlines()]
        assert scores == [10, new]
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in pids:
            end = time.monotonic() + 30
            while time.monotonic() < end and _alive(pid):
                time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def _result(db: Path, sid: str) -> dict:
    with sqlite3.connect(db) as conn:
        return json.loads(conn.execute("SELECT result FROM submissions WHERE id=?", (int(sid),)).fetchone()[0])


def _delivery(db: Path, sid: str) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT delivery FROM submissions WHERE id=?", (int(sid),)).fetchone()[0]
