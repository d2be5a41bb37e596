"""What the course-staff commands print, as real subprocesses on bwrap: why a
reference solution fails (exception, message, line), scores with at most two
decimals (JSON: full precision), no traceback when the reader of a pipe
leaves (`| head`), and no stray log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xgrader.config import DEFAULT_HANDLERS


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    return env


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("handlers")
    write(root, {
        # The reference fails at import: a name used on line 3 does not exist.
        "import_error/assignment.toml": 'title = "x"\nkind = "io"\n',
        "import_error/tests/cases.toml": '[[case]]\nexpr = "f(1)"\n',
        "import_error/solution/submission.py": "import os\n\nundefined_helper()\ndef f(n):\n    return n\n",
        "syntax_error/assignment.toml": 'title = "x"\nkind = "pytest"\n',
        "syntax_error/tests/test_s.py": "from submission import f\ndef test_f():\n    assert f(1) == 1\n",
        "syntax_error/solution/submission.py": "def f(n):\n    return n +\n",
        # The reference loads but fails a test (pytest) or a case (io).
        "fails_test/assignment.toml": 'title = "x"\nkind = "pytest"\n',
        "fails_test/tests/test_f.py": ("from submission import f\ndef test_one():\n    assert f(1) == 1\n"
                                       "def test_zero():\n    assert f(0) == 0\n"),
        "fails_test/solution/submission.py": "def f(n):\n    return n // n * n\n",
        "fails_case/assignment.toml": 'title = "x"\nkind = "io"\n',
        "fails_case/tests/cases.toml": '[[case]]\nexpr = "f(1)"\n[[case]]\nexpr = "f(0)"\n',
        "fails_case/solution/submission.py": "def f(n):\n    return n // n * n\n",
        # 7 cases over 10 points: a sample missing one case scores 60/7 = 8.571428...
        "sevenths/assignment.toml": 'title = "x"\nkind = "io"\nmax_points = 10\n',
        "sevenths/tests/cases.toml": "".join(f'[[case]]\nexpr = "f({i})"\n' for i in range(7)),
        "sevenths/solution/submission.py": "def f(n):\n    return n\n",
        "sevenths/samples/correct.py": "def f(n):\n    return n\n",
        "sevenths/samples/wrong_six.py": "def f(n):\n    return 0 if n == 6 else n\n",
        "sevenths/description.md": "f(n) returns n.\n",
    })
    return root


def xgrader(env, *args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xgrader", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=env, timeout=180)


def check(env, handlers: Path, *args: str) -> subprocess.CompletedProcess:
    return xgrader(env, "check", "--handlers", str(handlers), "--sandbox", "bwrap", *args)


@pytest.mark.parametrize("name, why", [
    ("import_error", ["does not load", "NameError: name 'undefined_helper' is not defined",
                      "submission.py, line 3: undefined_helper()"]),
    ("syntax_error", ["does not load", "SyntaxError", "submission.py, line 2: return n +"]),
    ("fails_test", ["failing: test_f.py::test_zero: ZeroDivisionError: integer division or modulo by zero",
                    "submission.py, line 2: return n // n * n"]),
    ("fails_case", ["case 2: the reference solution failed", "ZeroDivisionError: integer division or modulo by zero",
                    "submission.py, line 2: return n // n * n"]),
])
def test_check_says_why_the_reference_solution_fails(env, handlers, name, why):
    proc = check(env, handlers, name)
    assert proc.returncode == 1, proc.stderr
    for text in why:
        assert text in proc.stdout, proc.stdout
    assert proc.stderr == ""  # the reason is in the report, not in a log line


def test_scores_show_two_decimals_and_json_keeps_full_precision(env, handlers):
    proc = check(env, handlers, "sevenths")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 8.57/10 " in proc.stdout and "8.571" not in proc.stdout, proc.stdout
    assert proc.stderr == ""
    proc = check(env, handlers, "sevenths", "--json")
    result = json.loads(proc.stdout)
    scores = {s["name"]: s["score"] for s in result["assignments"][0]["samples"]}
    # The score as graded (and posted to the LMS: 4 decimals), not the display's 8.57.
    assert result["ok"] is True and scores["samples/wrong_six.py"] == round(60 / 7, 4) == 8.5714


def test_points_are_never_rounded_up_to_full_marks():
    from xgrader.authoring import points
    assert points(60 / 7, 10) == "8.57" and points(10, 10) == "10" and points(0.5) == "0.5"
    assert points(9.999, 10) == "9.99" and points(2 / 3) == "0.67"


@pytest.mark.parametrize("args", [
    ("--help",),
    ("check", "--help"),
    ("check", "--handlers", str(DEFAULT_HANDLERS), "--sandbox", "bwrap", "sum_digits"),
    ("grade", "--handlers", str(DEFAULT_HANDLERS), "--sandbox", "bwrap", "--text", "--payload", "sum_digits",
     str(DEFAULT_HANDLERS / "sum_digits/samples/wrong_offbyone.py")),
    ("batch", "--handlers", str(DEFAULT_HANDLERS), "--sandbox", "bwrap", "--payload", "sum_digits", "--out", "OUT",
     str(DEFAULT_HANDLERS / "sum_digits/samples")),
], ids=["help", "check-help", "check", "grade", "batch"])
def test_a_reader_that_leaves_is_no_error(env, tmp_path, args):
    """`xgrader ... | head`: stdout is a pipe whose reader is gone. No traceback,
    the exit status of a program ended by SIGPIPE."""
    args = tuple(str(tmp_path / "grades.csv") if a == "OUT" else a for a in args)
    read, write = os.pipe()
    os.close(read)
    try:
        proc = xgrader(env, *args, stdout=write)
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    if args[0] == "grade":  # it handled the broken pipe itself: the grading status stands
        assert proc.returncode == 0, proc.stderr
    elif args[-1] == "--help":  # argparse ignores a failed write of its help text
        assert proc.returncode in (0, 128 + signal.SIGPIPE), proc.stderr
    else:
        assert proc.returncode == 128 + signal.SIGPIPE, proc.stderr


def test_grade_batch_and_check_print_no_stray_log_lines(env, tmp_path):
    """A clean run prints the command's output only (batch: its progress line)."""
    sample = str(DEFAULT_HANDLERS / "is_prime/samples/wrong_offbyone.py")
    common = ("--handlers", str(DEFAULT_HANDLERS), "--sandbox", "bwrap")
    for _ in range(3):  # the fork servers' exit raced the check at close: repeat
        grade = xgrader(env, "grade", *common, "--payload", "is_prime", sample)
        assert grade.returncode == 0 and grade.stderr == "", grade.stderr
        check = xgrader(env, "check", *common, "is_prime")
        assert check.returncode == 0 and check.stderr == "", check.stderr
    batch = xgrader(env, "batch", *common, "--payload", "is_prime", "--out", str(tmp_path / "g.csv"),
                    str(DEFAULT_HANDLERS / "is_prime/samples"))
    assert batch.returncode == 0 and batch.stderr.splitlines() == [batch.stderr.splitlines()[0]], batch.stderr
    assert batch.stderr.startswith("[") and "warning" not in batch.stderr
