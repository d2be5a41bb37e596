"""pipeline.GradingCache: what the daemon loads once before forking (assignments,
expected values already on disk) is what every grading then uses, on the real
bwrap backend: no re-reading of the assignment folder, no recomputation."""

from __future__ import annotations

import os

import pytest

from xgrader import assignment as assignment_mod
from xgrader import dispatch, pipeline
from xgrader.config import Settings
from xgrader.handlers import io_kind
from xgrader.job import GradeRequest
from tests.support.grading import write_assignment

SQUARE = {
    "assignment.toml": 'title = "Square"\nkind = "io"\nmax_points = 2\nfunctions = ["square"]\n',
    "tests/cases.toml": """
        [[case]]
        expr = "square(3)"
        visible = true
        [[case]]
        expr = "square(-4)"
    """,
    "solution/submission.py": "def square(x):\n    return x * x\n",
}


def request(code: str) -> GradeRequest:
    return GradeRequest(grader="square", student_response=code, submission_id="c1")


@pytest.fixture
def setup(tmp_path, monkeypatch, bwrap_backend):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "handlers"
    write_assignment(root, "square", SQUARE)
    write_assignment(root, "broken", {"assignment.toml": 'kind = "nope"\n'})
    return Settings(handlers=root, sandbox="bwrap"), bwrap_backend


def test_preloaded_cache_grades_without_rereading_or_recomputing(setup, monkeypatch):
    settings, backend = setup
    # A first grading (no cache) computes the expected values and stores them on disk.
    report, _ = pipeline.grade_request(request("def square(x):\n    return x * x\n"), settings, backend)
    assert report.score == 2
    cache = pipeline.GradingCache(settings)
    assert cache.preload() == ["square"]   # "broken" is logged and skipped

    # From now on neither the folder nor the solution may be read or run again.
    def forbidden(*a, **k):
        raise AssertionError("re-read or recomputed despite the cache")

    monkeypatch.setattr(dispatch, "load_assignment", forbidden)
    monkeypatch.setattr(assignment_mod, "load_assignment", forbidden)
    monkeypatch.setattr(io_kind, "compute_reference", forbidden)
    for f in (settings.handlers.parent / "cache").rglob("*.json"):
        os.unlink(f)  # the expected values come from memory now

    report, reply = pipeline.grade_request(request("def square(x):\n    return abs(x) * 3\n"), settings, backend,
                                           cache=cache)
    assert report.score == 1 and not reply.correct   # right for 3, wrong for -4
    report, reply = pipeline.grade_request(request("def square(x):\n    return x ** 2\n"), settings, backend,
                                           cache=cache)
    assert report.score == 2 and reply.correct


def test_cache_rereads_an_edited_assignment(setup):
    settings, backend = setup
    cache = pipeline.GradingCache(settings)
    cache.preload()
    assert cache.registry.get("square").max_points == 2
    toml = settings.handlers / "square" / "assignment.toml"
    toml.write_text(toml.read_text().replace("max_points = 2", "max_points = 4"))
    later = os.stat(toml).st_mtime_ns + 10**9
    os.utime(toml, ns=(later, later))
    report, _ = pipeline.grade_request(request("def square(x):\n    return x * x\n"), settings, backend,
                                       cache=cache)
    assert report.max_score == 4 and report.score == 4
