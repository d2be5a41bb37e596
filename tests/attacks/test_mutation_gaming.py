"""Test-suite gaming (the mutation kind), on every sandbox backend: a student
suite that tells the implementations apart by anything but behaviour must
earn nothing.

The target (assignments/mutation_target) has two mutants: `changed` (add
subtracts) and `equivalent` (the same behaviour, other code: a marker
comment, 4 KB more source, shifted line numbers, other code objects). A
suite that catches `equivalent` detected a mutant without behaviour.

The strongest attack learns first: a probe submission fails on the
reference with a digest of everything it can observe (the module proxy and
its introspection, tracebacks, object reprs, files, sizes, environment) in
its message, which the feedback shows; a second submission passes only when
the digest is the same. If anything observed differed between
implementations, it would pass on the reference and fail on the mutants."""

from __future__ import annotations

import re

import pytest

from tests.attacks.conftest import leaks, report_texts

TARGET = "mutation_target"

PROBE = r'''
import hashlib
import inspect
import os
import sys

import calc


def observations():
    seen = []

    def attempt(label, fn):
        try:
            value = fn()
            seen.append("%s=%r" % (label, value))
        except BaseException as exc:
            seen.append("%s!%s:%s:%s" % (label, type(exc).__name__, exc, getattr(exc, "_xgrader_traceback", "")))

    attempt("file", lambda: getattr(calc, "__file__", None))
    attempt("dir", lambda: sorted(dir(calc)))
    attempt("reprs", lambda: [repr(calc.add), repr(calc.Counter), repr(calc.safe_div)])
    for name in ("__code__", "__globals__", "__wrapped__", "__dict__", "__closure__", "__module__",
                 "gi_code", "f_globals", "co_code", "__doc__"):
        attempt("add." + name, lambda name=name: getattr(calc.add, name))
        attempt("Counter." + name, lambda name=name: getattr(calc.Counter, name))
    attempt("os", lambda: calc.os)
    attempt("os.listdir", lambda: calc.os.listdir("."))
    attempt("walk", lambda: calc.walk())
    attempt("raise", lambda: calc.safe_div(1, 0))
    attempt("raise-type", lambda: calc.safe_div("x", 1))
    attempt("counter", lambda: repr(calc.Counter()))
    attempt("bump", lambda: repr(calc.Counter().bump))
    attempt("bump-call", lambda: calc.Counter().bump())
    attempt("func", lambda: calc.Counter().bump.__func__)
    attempt("n", lambda: calc.Counter().n)
    attempt("source", lambda: inspect.getsource(calc.add))
    attempt("module-source", lambda: inspect.getsource(calc))
    attempt("open", lambda: open("calc.py").read())
    for folder in (".", "/tmp", "/tmp/work", "/opt/xgrader"):
        attempt("ls " + folder, lambda folder=folder: sorted(
            (n, os.path.getsize(os.path.join(folder, n))) for n in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, n)) and not n.startswith("test_")))
    attempt("env", lambda: sorted(kv for kv in os.environ.items() if kv[0] != "PYTEST_CURRENT_TEST"))
    attempt("argv", lambda: sys.argv)
    attempt("path", lambda: sys.path)
    attempt("modules", lambda: sorted(m for m in sys.modules if "calc" in m or "mutant" in m))
    return seen


def digest():
    return hashlib.sha256("\n".join(observations()).encode()).hexdigest()
'''


def grade(attack_grader, code: str, files: dict[str, bytes] | None = None):
    report = attack_grader.grade(TARGET, code, files)
    assert not leaks(*report_texts(report)), "a canary reached the student"
    return report


def caught(report) -> dict[str, bool]:
    return {t.name.split(": ", 1)[1]: t.status.value == "passed" for t in report.tests}


def test_an_honest_suite_catches_the_changed_mutant_only(attack_grader):
    report = grade(attack_grader, "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    assert report.explanations[0].title == "Your tests caught 1 of 2 bugs; 1 survived", report
    assert caught(report) == {"add subtracts": True,
                              "the same behaviour written differently (no test can catch it by behaviour)": False}
    assert report.score == pytest.approx(report.max_score / 2)


def test_a_suite_that_learned_what_the_reference_looks_like_earns_nothing(attack_grader):
    probe = grade(attack_grader, PROBE + "\n\ndef test_leak():\n    assert False, 'DIGEST:' + digest()\n")
    assert probe.score == 0 and probe.explanations[0].title == "Your tests fail on a correct implementation"
    found = re.search(r"DIGEST:([0-9a-f]{64})", probe.tests[0].message or "")
    assert found, probe.tests[0]
    replay = grade(attack_grader, PROBE + f"\n\ndef test_same():\n    assert digest() == {found.group(1)!r}\n")
    # It passes on the reference (what it sees is stable) and on every mutant (nothing differs).
    assert replay.explanations[0].title == "Your tests caught 0 of 2 bugs; 2 survived", replay
    assert replay.score == 0


SOURCE_READER = r'''
import glob
import hashlib
import os

import calc

def implementation_texts():
    found = []
    for pattern in ("/tmp/**/*.py", "/opt/**/*.py", "/proc/*/cwd/*.py", "/proc/*/root/tmp/work/*.py"):
        for path in glob.glob(pattern, recursive=True)[:200]:
            if os.path.basename(path).startswith("test_"):
                continue
            try:
                with open(path, "rb") as f:
                    found.append(f.read())
            except OSError:
                pass
    return found

def test_no_mutant_marker():
    assert not any(b"MUTANT" in text for text in implementation_texts())

def test_reference_size():
    assert not any(b"CANARY_SOLUTION" in t and len(t) > 1000 for t in implementation_texts())
'''


@pytest.mark.parametrize("attack", ["source", "conftest_exit", "unregister_reporter", "fail_everything"])
def test_gaming_attempts_earn_nothing(attack_grader, attack):
    files = None
    code = ""
    if attack == "source":
        code = SOURCE_READER
    elif attack == "conftest_exit":
        # Forges the run's end before any test reports: on the reference that is a failure.
        code = "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"
        files = {"conftest.py": b"import os\n\ndef pytest_collection_finish(session):\n    os._exit(0)\n"}
    elif attack == "unregister_reporter":
        code = "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"
        files = {"conftest.py": b"def pytest_configure(config):\n"
                                b"    for p in list(config.pluginmanager.get_plugins()):\n"
                                b"        if type(p).__name__ == 'Reporter':\n"
                                b"            config.pluginmanager.unregister(p)\n"}
    elif attack == "fail_everything":
        code = "def test_nothing_passes():\n    assert False\n"
    if files:
        files = {"test_calc.py": code.encode(), **files}
        code = ""
    report = grade(attack_grader, code, files)
    assert report.score == 0, report
    if attack == "source":  # ran clean on the reference, caught nothing
        assert report.explanations[0].title == "Your tests caught 0 of 2 bugs; 2 survived", report
    else:
        assert report.explanations[0].title in ("Your tests fail on a correct implementation", "No tests found")
