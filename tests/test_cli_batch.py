"""`xgrader batch` over a folder of submissions (real bwrap sandboxes): the
CSV/JSON gradebook holds the scores each submission really gets."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.support.grading import write_assignment
from xgrader import authoring
from xgrader.cli.main import main
from xgrader.config import DEFAULT_HANDLERS, Settings
from xgrader.grading import Grader
from xgrader.handlers.expected import ExpectedStore

CASES = "".join(f'[[case]]\nname = "c{i}"\nexpr = "double({i})"\nvisible = {str(i < 2).lower()}\n'
                for i in range(4))
DOUBLE = {
    "assignment.toml": 'title = "double"\nkind = "io"\nmax_points = 4\nfunctions = ["double"]\n'
                       'test_timeout_s = 1\n[limits]\nwall_s = 3\n[compare]\nmode = "exact"\n',
    "solution/submission.py": "def double(x):\n    return 2 * x\n",
    "tests/cases.toml": CASES,
}
SUBMISSIONS = {
    "alice.py": "def double(x):\n    return x + x\n",                       # 4/4
    "bob.py": "def double(x):\n    return 2 * x if x < 2 else 0\n",          # visible pass, hidden fail: 2/4, bare score
    "carol.py": "def double(x):\n    return 2 * x if x >= 2 else -1\n",      # visible fail (shown), hidden pass: 2/4
    "dave.py": "def double(x)\n    return 2 * x\n",                         # syntax error 0/4
    "erin/submission.py": "def double(x):\n    return str(2 * x)\n",        # a folder upload, wrong type: 0/4
}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    handlers = tmp_path / "handlers"
    write_assignment(handlers, "double", DOUBLE)
    subs = tmp_path / "subs"
    for rel, text in SUBMISSIONS.items():
        (subs / rel).parent.mkdir(parents=True, exist_ok=True)
        (subs / rel).write_text(text)
    return handlers, subs, tmp_path / "out" / "grades.csv"


def test_batch_writes_a_gradebook(setup, capsys):
    handlers, subs, out = setup
    code = main(["batch", "--handlers", str(handlers), "--sandbox", "bwrap", "--payload", '{"grader": "double"}',
                 "--jobs", "2", "--out", str(out), str(subs)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "[5/5]" in captured.err  # progress on stderr
    rows = {r["file"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"alice.py", "bob.py", "carol.py", "dave.py", "erin"}
    scores = {k: float(r["score"]) for k, r in rows.items()}
    assert scores == {"alice.py": 4, "bob.py": 2, "carol.py": 2, "dave.py": 0, "erin": 0}
    assert rows["alice.py"]["correct"] == "true" and rows["bob.py"]["correct"] == "false"
    assert rows["dave.py"]["outcome"] == "syntax_error" and rows["erin"]["outcome"] == "failed"
    assert all(r["max"] == "4" for r in rows.values())
    # One column per test with its status.
    assert [rows["bob.py"][f"c{i}"] for i in range(4)] == ["passed", "passed", "failed", "failed"]
    assert [rows["carol.py"][f"c{i}"] for i in range(4)] == ["failed", "failed", "passed", "passed"]

    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["assignment"] == "double" and doc["max_points"] == 4
    by_file = {s["file"]: s for s in doc["submissions"]}
    assert {k: s["score"] for k, s in by_file.items()} == scores
    # Only bob lost points on hidden tests alone, with no explanation: a bare score.
    assert doc["no_useful_feedback"] == ["bob.py"]
    assert "1 got no useful feedback" in captured.out and "bob.py" in captured.out


def test_batch_keeps_submissions_it_cannot_read(setup, capsys):
    handlers, subs, out = setup
    (subs / "frank").mkdir()  # an empty folder: nothing to submit
    code = main(["batch", "--handlers", str(handlers), "--sandbox", "bwrap", "--payload", "double",
                 "--out", str(out), str(subs)])
    captured = capsys.readouterr()
    assert code == 1
    rows = {r["file"]: r for r in csv.DictReader(out.open())}
    assert rows["frank"]["outcome"] == "not graded" and rows["frank"]["score"] == ""
    assert float(rows["alice.py"]["score"]) == 4
    assert "not graded: frank" in captured.err


def test_batch_refuses_an_unknown_assignment(setup, capsys):
    handlers, subs, out = setup
    assert main(["batch", "--handlers", str(handlers), "--sandbox", "bwrap", "--payload", "nope",
                 "--out", str(out), str(subs)]) == 2
    assert "nope" in capsys.readouterr().err and not out.exists()


def test_batch_over_example_samples_matches_single_grading(tmp_path, monkeypatch, bwrap_backend, capsys):
    """The gradebook's scores are those each sample gets when graded alone."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    samples = tmp_path / "samples"
    shutil.copytree(DEFAULT_HANDLERS / "word_freq" / "samples", samples)
    out = tmp_path / "wf.csv"
    assert main(["batch", "--handlers", str(DEFAULT_HANDLERS), "--sandbox", "bwrap", "--payload", "word_freq",
                 "--jobs", "3", "--out", str(out), str(samples)]) == 0
    rows = {r["file"]: r for r in csv.DictReader(out.open())}
    grader = Grader(Settings(handlers=DEFAULT_HANDLERS, sandbox="bwrap"), bwrap_backend,
                    store=ExpectedStore(tmp_path / "cache2"))
    for path in authoring.submission_paths(samples):
        alone = authoring.grade_one(grader, authoring.request_for([path], "word_freq"))
        assert float(rows[path.name]["score"]) == pytest.approx(alone.score), path.name
        assert rows[path.name]["outcome"] == alone.outcome.value
