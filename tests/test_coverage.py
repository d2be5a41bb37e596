"""`xgrader coverage` through the real CLI: a folder graded with every test
hidden, or a batch gradebook read back; the HTML page checked in headless
chromium (its links lead to each submission's feedback); `grade --staff`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import chromium

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus" / "sum_digits"
PICK = ["returns_str.py", "sum_of_squares.py", "typo_return_name.py", "forgot_to_shrink.py"]


def _cli(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xgrader", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One coverage run over a small folder: 3 wrong submissions with specific
    feedback, one with nothing specific, one correct."""
    work = tmp_path_factory.mktemp("coverage")
    subs = work / "subs"
    subs.mkdir()
    for name in PICK:
        shutil.copy(CORPUS / name, subs / name)
    shutil.copy(REPO / "payload_handlers" / "sum_digits" / "samples" / "correct.py", subs / "correct.py")
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(work / "cache")}
    proc = _cli("coverage", "--handlers", str(REPO / "payload_handlers"), "--sandbox", "bwrap",
                "--payload", "sum_digits", "--all-hidden", "--html", str(work / "report.html"),
                "--json", str(work / "report.json"), str(subs), env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work, env, proc


def test_summary_per_criterion(graded):
    work, _env, proc = graded
    doc = json.loads((work / "report.json").read_text())
    summary = doc["summary"]
    row = summary["criteria"][0]
    assert row["criterion"] == "(whole assignment)" and summary["all_hidden"]
    assert (row["submissions"], row["lost_points"], row["with_specific"]) == (5, 4, 3)
    assert row["share"] == 0.75 and row["nothing_specific"] == ["sum_of_squares.py"]
    assert row["average_items"] == 0.75
    assert summary["signatures"] == {"runtime_error": 1, "str_not_number": 1, "time_limit": 1}
    assert "3/4 submissions that lost points got a specific item (75.0%)" in proc.stdout
    # Each submission's record: feedback items and the exact msg; hidden values only in the staff view.
    rec = next(r for r in doc["submissions"] if r["file"] == "returns_str.py")
    assert rec["feedback"][0]["signature"] == "str_not_number" and rec["feedback"][0]["specific"]
    assert any((t["staff"] or {}).get("input") == "sum_digits(9999)" for t in rec["tests"])
    assert "9999" not in rec["msg"]


def test_the_html_page_in_chromium(graded):
    work, _env, _proc = graded
    dom = chromium.dump_dom(work / "report.html")
    assert "<h1>Feedback coverage: Sum of digits</h1>" in dom
    rows = re.findall(r'<tr class="criterion"><td>(.*?)</td><td>(\d+)</td><td>(\d+)</td><td[^>]*>([\d.]+)%</td>', dom)
    assert rows == [("(whole assignment)", "4", "3", "75.0")]
    assert re.findall(r'<tr class="signature"><td>(\w+)</td><td>(\d+)</td></tr>', dom) == \
        [("runtime_error", "1"), ("str_not_number", "1"), ("time_limit", "1")]
    # The submission that got nothing specific links to its own feedback, rendered in the page.
    link = re.search(r'<ul id="nothing">\s*<li><a href="#(fb-\d+)">sum_of_squares.py</a></li>\s*</ul>', dom)
    assert link, dom[:3000]
    section = re.search(rf'<div class="sub" id="{link.group(1)}"><h3>sum_of_squares.py: (.*?)</h3>(.*?)</div>\s*</div>',
                        dom, re.S)
    assert section and "xgrader-feedback" in section.group(2) and "of 11 tests passed" in section.group(2)
    assert "<script" not in dom
    png = chromium.screenshot(work / "report.html", work / "shot.png")
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_coverage_reads_a_batch_gradebook(graded):
    work, env, _proc = graded
    book = work / "book.csv"
    proc = _cli("batch", "--handlers", str(REPO / "payload_handlers"), "--sandbox", "bwrap",
                "--payload", "sum_digits", "--out", str(book), str(work / "subs"), env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr
    gradebook = json.loads(book.with_suffix(".json").read_text())
    rec = next(r for r in gradebook["submissions"] if r["file"] == "returns_str.py")
    assert rec["msg"].startswith('<div class="xgrader-feedback">') and rec["feedback"]
    hidden = [t for t in rec["tests"] if not t["visible"]]
    assert hidden and all("actual" in t["staff"] for t in hidden)      # actual values, staff only
    proc = _cli("coverage", "--payload", "sum_digits", "--json", str(work / "again.json"),
                str(book.with_suffix(".json")), env=env, cwd=work)
    assert proc.returncode == 0, proc.stderr
    row = json.loads((work / "again.json").read_text())["summary"]["criteria"][0]
    # Graded as the course runs it (three cases visible): every wrong one has something specific.
    assert row["lost_points"] == 4 and row["share"] == 1.0


def test_grade_staff_shows_hidden_values_side_by_side(graded):
    work, env, _proc = graded
    args = ["grade", "--handlers", str(REPO / "payload_handlers"), "--sandbox", "bwrap", "--payload", "sum_digits",
            str(CORPUS / "returns_str.py")]
    staff = _cli(*args, "--staff", env=env, cwd=work)
    assert staff.returncode == 0, staff.stderr
    assert "Staff view" in staff.stdout and "input: sum_digits(987654321)" in staff.stdout
    assert "actual: '45'" in staff.stdout and "student is told: note 1" in staff.stdout
    reply = json.loads(_cli(*args, env=env, cwd=work).stdout)
    assert "987654321" not in reply["msg"] and "Staff view" not in reply["msg"]


def test_only_inert_feedback_is_embedded_as_markup():
    from xgrader.coverage import _inert
    ours = '<div class="xgrader-feedback"><p class="xgrader-summary"><strong>1/2 points</strong></p></div>'
    assert _inert(ours) == ours
    link = '<div class="xgrader-feedback"><p class="xgrader-hint-link"><a href="https://lms.example/h/1" ' \
           'target="_blank" rel="noopener noreferrer">rate</a></p></div>'
    assert _inert(link) == link
    for edited in ('<div class="xgrader-feedback"><script>alert(1)</script></div>',
                   '<div class="xgrader-feedback"><a href="javascript:alert(1)">x</a></div>',
                   '<div class="xgrader-feedback"><img src="https://evil.example/x.png"/></div>',
                   '<div onclick="x">', "not xml <"):
        assert _inert(edited).startswith("<pre>") and "<script>" not in _inert(edited)
