"""`xgrader hints escalations|report|forget-student|purge` over a real store,
the metrics read from the store, and `xgrader serve-hints` as a subprocess on
waitress (student page, staff login, /metrics)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest
import requests

from tests.support.fake_llm import _free_port
from tests.test_hints import (  # noqa: F401 (fixtures shared with the stage tests)
    make_stage, request, squares, wrong_report,
)
from tests.test_hints_loop_store import deliver
from tests.test_hints_pages import SECRET, form_of
from xgrader.cli.main import main
from xgrader.hints.models import HintType
from xgrader.hints.store import open_store


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hints.db'}"
    return request.getfixturevalue("redis_url")


def cli(store_url: str, *args: str) -> int:
    return main(["hints", "--store", store_url, *args])


def test_escalations_cli_list_show_claim_answer_close(store_url, capsys):
    store = open_store(store_url)
    a, b = deliver(store, student="anon-7"), deliver(store, assignment="other")
    store.rate(a, False)
    store.rate(b, False)
    first = store.escalate(a, "What is a <square>?", 3)
    second = store.escalate(b, "", 3)
    capsys.readouterr()
    assert cli(store_url, "escalations", "list") == 0
    out = capsys.readouterr().out
    assert out.index(f"\n{first.id:>5}") < out.index(f"\n{second.id:>5}")      # oldest first
    assert "What is a <square>?" in out and "waiting" in out
    assert cli(store_url, "escalations", "show", str(first.id)) == 0
    out = capsys.readouterr().out
    assert "student: anon-7" in out and "What is a <square>?" in out and "--- submission.py" in out
    assert cli(store_url, "escalations", "claim", str(first.id), "--as", "ana") == 0
    assert cli(store_url, "escalations", "answer", str(first.id), "--as", "bo", "--text", "x") == 1
    assert "claimed by ana" in capsys.readouterr().err
    assert cli(store_url, "escalations", "answer", str(first.id), "--as", "ana", "--text", "x times x") == 0
    assert "answered by ana" in capsys.readouterr().out
    assert store.escalation_get(first.id).answer == "x times x"
    assert cli(store_url, "escalations", "list", "--state", "answered", "--json") == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["answered_by"] == "ana"
    assert cli(store_url, "escalations", "close", str(second.id), "--as", "bo") == 0
    assert cli(store_url, "escalations", "list") == 0 and "(no open requests)" in capsys.readouterr().out
    assert cli(store_url, "escalations", "show", "999") == 1


def test_report_table_and_csv_show_the_helpful_rate(store_url, capsys):
    store = open_store(store_url)
    ids = [deliver(store, model="m1") for _ in range(4)] + [deliver(store, model="m2", hint_type=HintType.planning)]
    for i, helpful in zip(ids, (True, True, True, False, False)):
        store.rate(i, helpful)
    esc = store.escalate(ids[3], "", 3)
    store.escalation_act(esc.id, "answer", "ana", "ok")
    capsys.readouterr()
    assert cli(store_url, "report") == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if " m1 " in f" {line} ")
    assert row.split()[:8] == ["sq", "debugging", "m1", "4", "4", "3", "1", "75%"]
    assert "TOTAL" in out and "escalations waiting: 0" in out
    assert cli(store_url, "report", "--by", "model", "--csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["model"], r["helpful_rate"], r["answered"]) for r in rows] == [("m1", "0.7500", "1"), ("m2", "0.0000", "0")]
    assert cli(store_url, "report", "--by", "colour") == 2


def test_forget_student_and_purge_commands(store_url, capsys):
    store = open_store(store_url)
    gone, kept = deliver(store, student="gone"), deliver(store, student="kept")
    store.rate(gone, False)
    store.escalate(gone, "mine", 3)
    capsys.readouterr()
    assert cli(store_url, "forget-student", "gone") == 0
    assert "1 hints" in capsys.readouterr().out
    assert store.delivery_get(gone) is None and store.delivery_get(kept) is not None
    assert cli(store_url, "purge", "--older-than", "1") == 0 and store.delivery_get(kept) is not None
    assert cli(store_url, "purge", "--older-than", "0") == 0
    assert store.delivery_get(kept) is None and store.audit_list() == []


def test_daemon_metrics_read_ratings_and_escalations_from_the_store(store_url):
    from prometheus_client import generate_latest

    from xgrader.config import HintSettings, Settings
    from xgrader.metrics import build_hooks

    store = open_store(store_url)
    a, b = deliver(store, model="m1"), deliver(store, model="m1")
    store.rate(a, True)
    store.rate(b, False)
    esc = store.escalate(b, "", 3)
    hooks = build_hooks(Settings(hints=HintSettings(enabled=True, store=store_url)))
    text = generate_latest(hooks.registry).decode()
    assert 'xgrader_hint_ratings{assignment="sq",hint_type="debugging",model="m1",rating="unhelpful"} 1.0' in text
    assert 'xgrader_hint_helpful_ratio{assignment="sq",hint_type="debugging",model="m1"} 0.5' in text
    assert "xgrader_hint_escalations_waiting 1.0" in text
    store.escalation_act(esc.id, "answer", "ana", "ok")
    time.sleep(5.1)   # the collector caches a store read for 5 s
    text = generate_latest(hooks.registry).decode()
    assert "xgrader_hint_escalations_waiting 0.0" in text
    assert re.search(r'xgrader_hint_escalation_answer_seconds_count\{[^}]*model="m1"\} 1\.0', text)
    # Hints off: no store read at scrape time.
    assert "xgrader_hint_ratings" not in generate_latest(build_hooks(Settings()).registry).decode()


@pytest.mark.slow
def test_serve_hints_on_the_production_server(squares, wrong_report, fake_llm, tmp_path):  # noqa: F811
    port, metrics_port = _free_port(), _free_port()
    store_url = f"sqlite:///{tmp_path / 'hints.db'}"
    page_url = f"http://127.0.0.1:{port}/course/hints/"
    stage, _ = make_stage(squares, fake_llm, store_url, page_url=page_url, link_secret=SECRET)
    out = stage.apply(request(), wrong_report)
    assert out.hint_link.startswith(page_url + "h/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
    env.update({"XGRADER_HINTS__STORE": store_url, "XGRADER_HINTS__PAGE_URL": page_url,
                "XGRADER_HINTS__LINK_SECRET": SECRET, "XGRADER_HINTS_STAFF_USERS": "ana:ana-pw",
                "XGRADER_LOG_FORMAT": "json"})
    proc = subprocess.Popen([sys.executable, "-m", "xgrader", "serve-hints", "--port", str(port),
                             "--metrics-port", str(metrics_port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        ready = proc.stdout.readline()
        assert f"listening on http://127.0.0.1:{port}/course/hints/" in ready, ready
        s = requests.Session()
        page = s.get(out.hint_link, timeout=10)
        assert page.status_code == 200 and page.headers["Server"] == "xgrader"
        assert "Was this hint helpful?" in page.text
        r = s.post(out.hint_link, data={**form_of(page.text), "action": "rate", "rating": "unhelpful"},
                   allow_redirects=False, timeout=10)
        assert r.status_code == 303
        r = s.post(out.hint_link, data={**form_of(s.get(out.hint_link, timeout=10).text), "action": "escalate",
                                        "note": "still lost"}, timeout=10)
        assert "Waiting for the course staff" in r.text
        staff = requests.Session()
        base = f"http://127.0.0.1:{port}/course/hints/staff/"
        assert "name='password'" in staff.get(base, timeout=10).text
        bad = staff.post(base + "login", data={"username": "ana", "password": "nope", "next": base}, timeout=10)
        assert bad.status_code == 403 and "Wrong user or password" in bad.text
        r = staff.post(base + "login", data={"username": "ana", "password": "ana-pw",
                                             "next": "//evil.example/"}, allow_redirects=False, timeout=10)
        assert r.status_code == 303 and r.headers["Location"] == "/course/hints/staff/"   # no open redirect
        listing = staff.get(base, timeout=10).text
        assert "still lost" in listing and "signed in as <strong>ana</strong>" in listing
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'rating="unhelpful"} 1.0' in metrics and "xgrader_hint_escalations_waiting 1.0" in metrics
        assert requests.get(f"http://127.0.0.1:{port}/other", timeout=10).status_code == 404
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=15)[0]
    assert proc.returncode == 0 and "serve-hints stopped" in rest


def test_escalation_show_gives_staff_what_a_hidden_test_gave(store_url, capsys):
    from xgrader.hints.models import AuditRecord, HintOutcome
    from xgrader.hints.records import Delivery, StaffTest

    store = open_store(store_url)
    audit_id = store.audit_add(AuditRecord(assignment="sq", student="s1", outcome=HintOutcome.delivered,
                                           hint_type=HintType.debugging, model="m1", hint="h", delivered=True))
    store.delivery_put(Delivery(
        audit_id=audit_id, student="s1", assignment="sq", hint_type=HintType.debugging, model="m1", hint="h",
        files={"submission.py": "print(1)\n"},
        tests=[StaffTest(name="case 2", status="failed", visible=False, definition="expression: square_sum([31337])",
                         happened={"expected": "982007569", "actual": "62674"})]))
    store.rate(audit_id, False)
    esc = store.escalate(audit_id, "", 3)
    capsys.readouterr()
    assert cli(store_url, "escalations", "show", str(esc.id)) == 0
    out = capsys.readouterr().out
    assert "hidden case 2: failed" in out and "expression: square_sum([31337])" in out
    assert "expected: 982007569" in out and "actual: 62674" in out
