"""Acceptance: the corpus of wrong submissions (tests/corpus/<assignment>/),
graded with every test hidden by `xgrader coverage --all-hidden`.

- At least 90% of the wrong submissions get a specific feedback item.
- Every msg is well-formed XML with only the inert tags feedback.py writes.
- No msg holds a hidden input or expected value: canary cases with unique
  values are planted in every example assignment (checked in the whole msg,
  numbers by value), and the hidden values the grader itself reports in the
  staff view are collected and looked for in every explanation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.dom.minidom
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support import chromium

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus"
ASSIGNMENTS = ["sum_digits", "is_prime", "word_freq", "grade_stats", "temperature_notebook"]
ALLOWED_TAGS = {"div", "p", "strong", "em", "pre", "ul", "li", "br"}

# Planted hidden cases, with values found nowhere else.
PLANTED_CASES = {
    "sum_digits": '\n[[case]]\nname = "planted"\nexpr = "sum_digits(738291)"\n',
    "word_freq": "\n[[case]]\nname = \"planted\"\nexpr = \"top_words('zebrafish quokka zebrafish axolotl', 2)\"\n",
    "grade_stats": '\n[[case]]\nname = "planted"\nstdin = "73.25\\n61.75\\n"\n',
}
PLANTED_TESTS = {
    "is_prime": "from submission import is_prime, primes_up_to\n\n\ndef test_planted():\n"
                "    assert is_prime(7919) is True\n    assert primes_up_to(7927)[-1] == 7927\n",
    "temperature_notebook": "import pytest\nfrom submission import c_to_f\n\n\ndef test_planted():\n"
                            "    assert c_to_f(36.65) == pytest.approx(97.97)\n",
}
CANARY_WORDS = ["zebrafish", "quokka", "axolotl"]
CANARY_NUMBERS = [738291.0, 73.25, 61.75, 67.5, 7919.0, 7927.0, 36.65, 97.97]


@pytest.fixture(scope="module")
def coverage_runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("corpus")
    handlers = work / "handlers"
    shutil.copytree(REPO / "payload_handlers", handlers, ignore=shutil.ignore_patterns("__pycache__"))
    for name, case in PLANTED_CASES.items():
        with (handlers / name / "tests" / "cases.toml").open("a") as f:
            f.write(case)
    for name, source in PLANTED_TESTS.items():
        (handlers / name / "tests" / "test_planted.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(work / "cache")}
    runs = {}
    for name in ASSIGNMENTS:
        out = work / name
        proc = subprocess.run(
            [sys.executable, "-m", "xgrader", "coverage", "--handlers", str(handlers), "--sandbox", "bwrap",
             "--payload", name, "--all-hidden", "--jobs", "2", "--json", str(out.with_suffix(".json")),
             "--html", str(out.with_suffix(".html")), str(CORPUS / name)],
            capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads(out.with_suffix(".json").read_text())
    return work, runs


def test_the_corpus_is_large_and_wrong(coverage_runs):
    _work, runs = coverage_runs
    total = sum(len(r["submissions"]) for r in runs.values())
    assert total >= 150
    for name, run in runs.items():
        whole = run["summary"]["criteria"][0]
        # Every corpus submission is wrong: it loses points (a forbidden call's marks count).
        assert whole["lost_points"] == len(run["submissions"]) == whole["submissions"], name


def test_at_least_90_percent_get_something_specific(coverage_runs):
    _work, runs = coverage_runs
    rows = {name: run["summary"]["criteria"][0] for name, run in runs.items()}
    lost = sum(r["lost_points"] for r in rows.values())
    specific = sum(r["with_specific"] for r in rows.values())
    assert specific / lost >= 0.90, {n: (r["with_specific"], r["lost_points"], r["nothing_specific"])
                                     for n, r in rows.items()}
    for name, row in rows.items():
        assert row["share"] >= 0.85, (name, row["nothing_specific"])


def _text(msg: str) -> str:
    return "".join(ET.fromstring(msg).itertext())


def test_every_msg_is_well_formed_inert_xml(coverage_runs):
    _work, runs = coverage_runs
    for run in runs.values():
        for rec in run["submissions"]:
            msg = rec["msg"]
            xml.dom.minidom.parseString(msg)
            root = ET.fromstring(msg)
            assert root.tag == "div" and root.get("class") == "xgrader-feedback"
            for el in root.iter():
                assert el.tag in ALLOWED_TAGS, (rec["file"], el.tag)
                assert all(v.startswith(("xgrader-", "white-space:")) for v in el.attrib.values())


def _numbers(text: str) -> set[float]:
    return {float(m) for m in re.findall(r"-?\d+(?:\.\d+)?", text)}


def test_no_msg_holds_a_planted_hidden_value(coverage_runs):
    _work, runs = coverage_runs
    planted_failed = 0
    for run in runs.values():
        for rec in run["submissions"]:
            text = _text(rec["msg"]).lower()
            for word in CANARY_WORDS:
                assert word not in text, (rec["file"], word)
            leaked = _numbers(text) & set(CANARY_NUMBERS)
            assert not leaked, (rec["file"], leaked, text[:2000])
            planted_failed += any(t["test_id"].endswith(("planted", "test_planted")) and t["status"] != "passed"
                                  for t in rec["tests"])
    assert planted_failed >= 100   # the planted tests failed (so were explained) in most submissions


_LOCATION = re.compile(r"\b(line|lines|cell|after|in|of|at most|first on line)\s+-?\d+(\.\d+)?|\d+(\.\d+)?\s*"
                       r"(s\b|hidden tests?|extra lines?|points?|tests?|nested calls|expected lines?|keys?|more)",
                       re.IGNORECASE)


def test_no_explanation_holds_a_hidden_value_the_grader_reports(coverage_runs):
    """The staff view of each record lists every hidden test's input and
    expected value: none of their literals (3+ characters; words 4+) may
    appear in an explanation unless the student's own source has it."""
    _work, runs = coverage_runs
    checked = 0
    for name, run in runs.items():
        # What the student is shown anyway: the problem statement (names of functions, examples).
        public = (REPO / "payload_handlers" / name / "description.md").read_text()
        # ...and the grader's own wording (fixed text: a word in it carries nothing hidden).
        public += "".join((REPO / "xgrader" / f).read_text() for f in ("explain.py", "feedback.py", "criteria.py"))
        public += (REPO / "payload_handlers" / name / "assignment.toml").read_text()
        public += (REPO / "payload_handlers" / "signatures" / "common.toml").read_text()
        for rec in run["submissions"]:
            source = _source_text(CORPUS / name / rec["file"]) + "\n" + public
            explanations = " ".join(
                "".join(el.itertext()) for el in ET.fromstring(rec["msg"]).iter("div")
                if el.get("class") in ("xgrader-explanation", "xgrader-criterion"))
            prose = _LOCATION.sub(" ", explanations)
            values = set()
            for t in rec["tests"]:
                staff = t.get("staff") or {}
                if t["visible"]:
                    continue
                for key in ("input", "expected"):
                    values |= set(re.findall(r"[A-Za-z_]{4,}|-?\d+(?:\.\d+)?", str(staff.get(key) or "")))
            shown_anyway = _numbers(source)
            for value in values:
                number = value[0].isdigit() or value[0] == "-"
                if value in source or len(value) < 3 or (number and float(value) in shown_anyway) or \
                        value.lower() in {"true", "false", "none", "count", "mean", "passed", "scores"}:
                    continue
                checked += 1
                if number:
                    assert float(value) not in _numbers(prose), (name, rec["file"], value, prose[:1500])
                else:
                    assert not re.search(rf"\b{re.escape(value)}\b", prose), (name, rec["file"], value)
    assert checked > 500   # hidden (value, submission) pairs actually checked


def _source_text(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return "\n".join(p.read_text(errors="replace") for p in files)


def test_the_coverage_pages_render(coverage_runs):
    work, _runs = coverage_runs
    dom = chromium.dump_dom(work / "word_freq.html")
    titles = re.findall(r'<tr class="criterion"><td>(.*?)</td>', dom)
    assert titles == ["(whole assignment)", "Counting words (count_words)",
                      "Cleaning text (words in cleaning.py)", "Ranking (top_words)"]
    for anchor in re.findall(r'href="#(fb-\d+)"', dom):
        assert f'id="{anchor}"' in dom
