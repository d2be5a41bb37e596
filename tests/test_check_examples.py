"""`xgrader check` on every bundled example assignment (real bwrap sandboxes),
and on broken assignments: every kind of failure it must catch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.grading import write_assignment
from xgrader import authoring
from xgrader.cli.main import main
from xgrader.config import DEFAULT_HANDLERS, Settings
from xgrader.dispatch import AssignmentRegistry
from xgrader.grading import Grader
from xgrader.handlers.expected import ExpectedStore

EXAMPLES = AssignmentRegistry(DEFAULT_HANDLERS).names()


@pytest.fixture(scope="module")
def example_grader(bwrap_backend, tmp_path_factory) -> Grader:
    settings = Settings(handlers=DEFAULT_HANDLERS, sandbox="bwrap")
    return Grader(settings, bwrap_backend, store=ExpectedStore(tmp_path_factory.mktemp("expected")))


def test_the_examples_cover_every_kind_and_form():
    assert len(EXAMPLES) >= 5
    registry = AssignmentRegistry(DEFAULT_HANDLERS)
    kinds = {registry.get(n).config.kind for n in EXAMPLES}
    assert kinds == {"pytest", "io", "image", "mutation"}
    samples = [p for n in EXAMPLES for p in authoring.submission_paths(DEFAULT_HANDLERS / n / "samples")]
    suffixes = {p.suffix if p.is_file() else "/" for p in samples}
    assert {".py", ".ipynb", ".zip", "/"} <= suffixes
    assert any(b"marimo.App" in p.read_bytes() for p in samples if p.suffix == ".py")
    names = {p.stem for p in samples}
    # The demo must show these outcomes: a correct, a wrong, a crashing, an infinite-loop and a syntax-error sample.
    for needed in ("correct", "wrong_offbyone", "wrong_infinite_loop", "wrong_syntax", "wrong_negative_crash"):
        assert needed in names, needed
    for n in EXAMPLES:
        wrong = [p for p in authoring.submission_paths(DEFAULT_HANDLERS / n / "samples")
                 if not authoring.expects_full_marks(p)]
        assert len(wrong) >= 5, n


@pytest.mark.parametrize("name", EXAMPLES)
def test_check_passes_on_example(example_grader, name):
    result = authoring.check_assignment(example_grader, name)
    report = authoring.render_check(result)
    assert result.ok, report
    assert not result.errors and not result.warnings, report
    first = "(model tests)" if example_grader.registry.get(name).config.kind == "mutation" else "(reference solution)"
    assert result.samples[0].name == first and result.samples[0].ok
    assert any(c.want_full for c in result.samples[1:]) and any(not c.want_full for c in result.samples)
    # Each sample was graded for real: wrong ones below full marks, correct ones at it.
    max_points = example_grader.registry.get(name).max_points
    for c in result.samples:
        assert c.score is not None and c.max_score == max_points, c  # a rejected upload too
        assert (c.score >= c.max_score) == c.want_full, report


def test_outcomes_of_the_demo_samples(example_grader):
    """The samples the demo shows really produce the outcome their names promise."""
    def outcome(grader_name: str, sample: str) -> str:
        path = DEFAULT_HANDLERS / grader_name / "samples" / sample
        return authoring.grade_one(example_grader, authoring.request_for([path], grader_name)).outcome.value

    assert outcome("sum_digits", "wrong_infinite_loop.py") == "time_limit"
    assert outcome("is_prime", "wrong_syntax.py") == "syntax_error"
    assert outcome("sum_digits", "wrong_missing_function.py") == "missing_function"
    assert outcome("word_freq", "wrong_missing_module") == "runtime_error"
    assert outcome("word_freq", "wrong_zip_escape.zip") == "bad_submission"
    assert outcome("temperature_notebook", "wrong_cell_order.ipynb") == "runtime_error"
    assert outcome("sunset_image", "wrong_syntax.py") == "syntax_error"
    assert outcome("sunset_image", "wrong_infinite_loop.py") == "time_limit"
    assert outcome("leap_year_tests", "wrong_infinite_loop.py") == "time_limit"
    assert outcome("leap_year_tests", "wrong_weak_suite.py") == "partial"


# -- broken assignments: check must fail, saying why ---------------------------

GOOD = {
    "assignment.toml": 'title = "double"\nkind = "io"\nmax_points = 2\nfunctions = ["double"]\n'
                       'test_timeout_s = 1\n[limits]\nwall_s = 3\n',
    "description.md": "Write double(x).",
    "solution/submission.py": "def double(x):\n    return 2 * x\n",
    "tests/cases.toml": '[[case]]\nexpr = "double(2)"\nvisible = true\n[[case]]\nexpr = "double(-3)"\n',
    "samples/correct.py": "def double(x):\n    return x + x\n",
    **{f"samples/wrong_{i}.py": f"def double(x):\n    return x + {i + 1}\n" for i in range(5)},
}


def run_check(root: Path, name: str, capsys) -> tuple[int, str]:
    code = main(["check", "--handlers", str(root), "--sandbox", "bwrap", name])
    return code, capsys.readouterr().out


@pytest.fixture
def handlers(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the CLI's expected-value cache
    root = tmp_path / "handlers"
    root.mkdir()
    return root


def test_check_cli_passes_a_good_assignment(handlers, capsys):
    write_assignment(handlers, "double", GOOD)
    code, out = run_check(handlers, "double", capsys)
    assert code == 0, out
    assert "PASS  double" in out and "1/1 assignments pass" in out


def test_check_catches_a_wrong_sample_at_full_marks(handlers, capsys):
    # x * 2 is right: a "wrong" sample the tests cannot tell apart from the solution.
    write_assignment(handlers, "double", {**GOOD, "samples/wrong_sneaky.py": "def double(x):\n    return x * 2\n"})
    code, out = run_check(handlers, "double", capsys)
    assert code == 1, out
    assert "FAIL  double" in out
    line = next(ln for ln in out.splitlines() if "wrong_sneaky" in ln)
    assert "FAIL" in line and "tests miss this mistake" in line


def test_check_catches_a_correct_sample_below_full_marks(handlers, capsys):
    write_assignment(handlers, "double", {**GOOD, "samples/correct_too.py": "def double(x):\n    return x\n"})
    code, out = run_check(handlers, "double", capsys)
    assert code == 1
    assert "expected full marks" in next(ln for ln in out.splitlines() if "correct_too" in ln)


def test_check_catches_a_reference_solution_that_fails(handlers, capsys):
    write_assignment(handlers, "double", {**GOOD, "tests/cases.toml": GOOD["tests/cases.toml"]
                                          + '[[case]]\nexpr = "double(1)"\nexpected = "3"\n'})
    code, out = run_check(handlers, "double", capsys)
    assert code == 1
    assert "FAIL (reference solution)" in " ".join(out.split()), out


def test_check_reports_config_errors_with_file_and_field(handlers, capsys):
    write_assignment(handlers, "double", {**GOOD, "assignment.toml": GOOD["assignment.toml"] + "max_pointz = 3\n"})
    code, out = run_check(handlers, "double", capsys)
    assert code == 1
    assert "assignment.toml" in out and "max_pointz" in out


def test_check_all_and_missing_solution(handlers, capsys):
    write_assignment(handlers, "double", GOOD)
    broken = write_assignment(handlers, "nosolution", GOOD)
    shutil.rmtree(broken / "solution")
    code = main(["check", "--handlers", str(handlers), "--sandbox", "bwrap", "--all"])
    out = capsys.readouterr().out
    assert code == 1
    assert "PASS  double" in out and "FAIL  nosolution" in out and "1/2 assignments pass" in out
    assert "solution" in next(ln for ln in out.splitlines() if "error:" in ln)


def test_check_needs_one_assignment_or_all(handlers, capsys):
    assert main(["check", "--handlers", str(handlers)]) == 2
    assert "ASSIGNMENT or --all" in capsys.readouterr().err


def test_lint_warnings_do_not_fail_the_check(handlers, capsys):
    files = {k: v for k, v in GOOD.items() if not k.startswith("samples/wrong_") and k != "description.md"}
    files["tests/cases.toml"] = GOOD["tests/cases.toml"].replace("visible = true\n", "")
    files["samples/wrong_negative.py"] = "def double(x):\n    return abs(2 * x)\n"  # fails a hidden case only
    write_assignment(handlers, "double", files)
    pytest_kind = {
        "assignment.toml": 'title = "p"\nkind = "pytest"\n[[tests]]\npattern = "test_nothing_like_this"\nweight = 2\n',
        "description.md": "Write double(x).",
        "solution/submission.py": GOOD["solution/submission.py"],
        "tests/test_double.py": "from submission import double\ndef test_two():\n    assert double(2) == 4\n",
        "samples/correct.py": GOOD["samples/correct.py"],
    }
    write_assignment(handlers, "pdouble", pytest_kind)
    code = main(["check", "--handlers", str(handlers), "--sandbox", "bwrap", "--all"])
    out = capsys.readouterr().out
    assert code == 0, out
    warnings = [ln for ln in out.splitlines() if "warning:" in ln]
    assert any("description.md" in w for w in warnings)
    assert any("no visible case" in w for w in warnings)
    assert any("1 known-wrong samples" in w for w in warnings)
    assert any("wrong_negative.py" in w and "bare score" in w for w in warnings)
    assert any("test_nothing_like_this" in w for w in warnings)
