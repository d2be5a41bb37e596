"""The pytest kind on the real bwrap backend: instructor pytest files run in a
test sandbox against the `submission` proxy; every verdict path."""

from __future__ import annotations

import pytest

from tests.support.grading import GradingKit
from xgrader.report import Outcome
from xgrader.report import TestStatus as Status

SOLUTION = '''
class NegativeError(Exception):
    pass

def is_prime(n):
    if n < 0:
        raise NegativeError("negative: %d" % n)
    if n < 2:
        return False
    return all(n % i for i in range(2, int(n ** 0.5) + 1))

def check(n):
    if not isinstance(n, int):
        raise TypeError("need an int")
    print("checking", n)
    return {"n": n, "prime": is_prime(n), "pair": (n, [n])}

class Stack:
    def __init__(self, items=()):
        self.items = list(items)
    def push(self, x):
        self.items.append(x)
    def pop(self):
        return self.items.pop()
    def __len__(self):
        return len(self.items)
    def __str__(self):
        return "Stack%s" % self.items
    def __iter__(self):
        return iter(self.items)
'''

TESTS = '''
import pytest
from submission import is_prime, check, Stack, NegativeError

@pytest.mark.parametrize("n, expected", [(2, True), (7, True), (9, False), (1, False)])
def test_small(n, expected):
    assert is_prime(n) == expected

def test_big():
    assert is_prime(1_000_003) is True

def test_negative_raises():
    with pytest.raises(NegativeError, match="negative"):
        is_prime(-3)

def test_check_types():
    with pytest.raises(TypeError):
        check("x")
    assert check(7) == {"n": 7, "prime": True, "pair": (7, [7])}

def test_stack():
    s = Stack([1])
    s.push("two")
    assert len(s) == 2
    assert str(s) == "Stack[1, 'two']"
    assert list(s) == [1, "two"]
    assert s.pop() == "two"
    assert s.items == [1]
'''

PUBLIC = '''
from submission import is_prime

def test_public_example():
    assert is_prime(5) is True
'''


@pytest.fixture(scope="module")
def py_kit(kit: GradingKit) -> GradingKit:
    kit.add("ptest", {
        "assignment.toml": """
            title = "Primes with pytest"
            kind = "pytest"
            max_points = 20
            functions = ["is_prime", "check", "Stack"]
            test_timeout_s = 0.7
            [limits]
            memory_mb = 96
            [[tests]]
            pattern = "test_small"
            visible = true
            [[tests]]
            pattern = "test_big"
            weight = 3
            [[tests]]
            pattern = "test_stack"
            weight = 2
            visible = true
        """,
        "tests/test_primes.py": TESTS,
        "public_tests/test_public.py": PUBLIC,
        "solution/submission.py": SOLUTION,
    })
    kit.add("exits", {
        "assignment.toml": 'title = "x"\nkind = "pytest"\nmax_points = 3\n',
        # An instructor test that ends the test run when the answer is wrong:
        # the tests after it never report and must count as failed.
        "tests/test_exit.py": (
            "import os\nfrom submission import f\n"
            "def test_a():\n    if f() != 1:\n        os._exit(0)\n"
            "def test_b():\n    assert f() == 1\n"
            "def test_c():\n    assert f() == 1\n"),
        "solution/submission.py": "def f():\n    return 1\n",
    })
    return kit


def weight_total():
    return 4 + 3 + 1 + 1 + 2 + 1  # small x4, big 3, negative, check, stack 2, public


def statuses(report):
    return {t.name: t.status for t in report.tests}


def test_solution_passes(py_kit):
    report = py_kit.grade("ptest", SOLUTION)
    assert report.outcome is Outcome.passed and report.score == 20, statuses(report)
    assert len(report.tests) == 9


def test_partial_credit_uses_weights(py_kit):
    code = SOLUTION + "\n_p = is_prime\ndef is_prime(n):\n    return False if n == 1_000_003 else _p(n)\n"
    report = py_kit.grade("ptest", code)
    assert report.outcome is Outcome.partial
    assert report.score == pytest.approx(20 * (weight_total() - 3) / weight_total())
    big = next(t for t in report.tests if t.name == "test_big")
    assert big.status is Status.failed and not big.visible and big.message is None and big.actual is None


def test_visible_failure_shows_input_expected_actual_output(py_kit):
    code = SOLUTION + "\n_p = is_prime\ndef is_prime(n):\n    print('looking at', n)\n    return n == 9 or _p(n)\n"
    report = py_kit.grade("ptest", code)
    t = next(t for t in report.tests if t.name == "test_primes.py::test_small[9-False]")
    assert t.status is Status.failed and t.visible
    assert t.input == "is_prime(9)" and t.actual == "True" and t.expected == "False"
    assert "looking at 9" in t.output


def test_hidden_names_drop_parameters(py_kit):
    # Make test_small hidden through a second assignment using the same tests.
    report = py_kit.grade("ptest", "def is_prime(n):\n    return True\n")
    hidden = [t for t in report.tests if not t.visible]
    assert hidden and all("[" not in t.name for t in hidden)
    assert all(t.input is None and t.expected is None and t.output is None for t in hidden)


def test_public_tests_are_visible(py_kit):
    report = py_kit.grade("ptest", SOLUTION.replace("return all(", "return n != 5 and all("))
    t = next(t for t in report.tests if "public" in t.name)
    assert t.visible and t.status is Status.failed


def test_syntax_error(py_kit):
    report = py_kit.grade("ptest", "def is_prime(n:\n    return 1\n")
    assert report.outcome is Outcome.syntax_error and report.score == 0
    assert report.explanations[0].line == 1 and report.explanations[0].source_line.startswith("def is_prime")


def test_missing_function(py_kit):
    report = py_kit.grade("ptest", "def is_prim(n):\n    return True\n")
    assert report.outcome is Outcome.missing_function and report.score == 0
    assert "is_prime" in report.explanations[0].title


def test_missing_one_function_keeps_other_points(py_kit):
    code = SOLUTION.replace("class Stack:", "class Stak:")
    report = py_kit.grade("ptest", code)
    assert report.outcome is Outcome.partial
    # The test could not run (no Stack): not a wrong answer, so no signature fires on it.
    assert statuses(report)["test_primes.py::test_stack"] is Status.not_run
    assert any("Stack" in e.title for e in report.explanations)


def test_wrong_signature_is_an_error_with_type(py_kit):
    report = py_kit.grade("ptest", SOLUTION.replace("def is_prime(n):", "def is_prime(n, m):"))
    t = next(t for t in report.tests if t.name == "test_primes.py::test_small[2-True]")
    assert t.status is Status.error and t.exception_type == "TypeError"
    assert report.outcome is Outcome.partial  # Stack's tests still pass
    assert any("parameters do not match" in e.title and "'m'" in e.detail for e in report.explanations)


def test_exception_types_cross_the_proxy(py_kit):
    # Raising ValueError instead of the expected NegativeError fails that test only.
    code = SOLUTION.replace('raise NegativeError("negative: %d" % n)', 'raise ValueError("nope")')
    report = py_kit.grade("ptest", code)
    assert statuses(report)["test_negative_raises"] is Status.error
    assert sum(s is Status.passed for s in statuses(report).values()) == 8


def test_timeout_kills_and_next_tests_run_on_a_fresh_runner(py_kit):
    code = SOLUTION + "\n_p = is_prime\ndef is_prime(n):\n    while n == 7: pass\n    return _p(n)\n"
    report = py_kit.grade("ptest", code)
    st = statuses(report)
    assert st["test_primes.py::test_small[7-True]"] is Status.timeout
    assert st["test_primes.py::test_small[9-False]"] is Status.passed
    assert report.outcome is Outcome.time_limit and report.score > 0


def test_a_refused_allocation_is_the_memory_limit(py_kit):
    code = SOLUTION + "\n_p = is_prime\ndef is_prime(n):\n    if n == 1_000_003:\n        x = bytearray(2**48)\n    return _p(n)\n"
    report = py_kit.grade("ptest", code)
    assert statuses(report)["test_big"] is Status.error
    assert report.outcome is Outcome.memory_limit


def test_memory_limit(py_kit):
    code = SOLUTION + "\n_p = is_prime\ndef is_prime(n):\n    if n == 1_000_003:\n        x = bytearray(300 * 2**20)\n    return _p(n)\n"
    report = py_kit.grade("ptest", code)
    assert statuses(report)["test_big"] is Status.error
    assert report.outcome is Outcome.memory_limit


def test_output_limit(py_kit):
    code = SOLUTION + "\n_p = is_prime\ndef is_prime(n):\n    while n == 9: print('spam' * 1000)\n    return _p(n)\n"
    report = py_kit.grade("ptest", code)
    assert statuses(report)["test_primes.py::test_small[9-False]"] is Status.error
    assert report.outcome is Outcome.output_limit


def test_import_time_crash(py_kit):
    report = py_kit.grade("ptest", "raise SystemExit(0)\n")
    assert report.score == 0 and report.outcome is Outcome.runtime_error
    # The module never loaded: no test ran (and none counts as "ran and failed").
    assert all(t.status is Status.not_run for t in report.tests)


def test_tests_that_never_report_are_missing_failures(py_kit):
    assert py_kit.grade("exits", "def f():\n    return 1\n").score == 3
    report = py_kit.grade("exits", "def f():\n    return 2\n")
    assert report.score == 0
    assert [t.status for t in report.tests] == [Status.missing] * 3


# -- the test sandbox talks to the student's runner itself (bwrap: a peer channel) --

PEER_TESTS = '''
from submission import f, shout

def test_first():
    assert f(1) == 2

def test_second():
    assert f(2) == 3

def test_third():
    assert f(3) == 4

def test_printed_text_is_cleaned_as_the_host_cleans_it(student_output):
    shout()
    assert student_output.last.out == "ab\\n"
'''

FORGE_REPLY = '''
import gc, os, sys
def _channel():
    core = sys.modules["runner_core"]
    return next(o for o in gc.get_objects() if isinstance(o, core.Channel))
def f(n):
    if n == 2:
        os.write(_channel().w, %s)
    return n + 1
def shout():
    print("a\\x07\\x1bb")
'''


@pytest.fixture(scope="module")
def peer_kit(kit: GradingKit) -> GradingKit:
    kit.add("peer", {
        "assignment.toml": 'title = "peer"\nkind = "pytest"\nmax_points = 4\ntest_timeout_s = 2\n',
        "tests/test_peer.py": PEER_TESTS,
        "solution/submission.py": "def f(n):\n    return n + 1\ndef shout():\n    print('ab')\n",
    })
    return kit


def test_calls_go_straight_to_the_runner(peer_kit, monkeypatch):
    from xgrader.handlers import student
    peer_kit.grade("peer", "def f(n):\n    return n + 1\n")  # the reference run, first
    relayed = []
    request = student.StudentRunner.request
    monkeypatch.setattr(student.StudentRunner, "request",
                        lambda self, msg, timeout: relayed.append(msg["op"]) or request(self, msg, timeout))
    report = peer_kit.grade("peer", "def f(n):\n    return n + 1\ndef shout():\n    print('a\\x07b')\n")
    assert report.score == 4, statuses(report)
    assert relayed == ["load"]  # the four tests' calls never went through the host


@pytest.mark.parametrize("forged", [
    'b"[" * 100 + b"1" + b"]" * 100 + b"\\n"',        # nested past the depth the host allows
    'b"{\\"id\\": " + b"9" * 50 + b"\\n"',               # not JSON
    'b"x" * (5 * 1024 * 1024)',                         # a line past 4 MiB
])
def test_an_unreadable_reply_ends_that_runner_and_the_next_test_runs_on_a_fresh_one(peer_kit, forged):
    report = peer_kit.grade("peer", FORGE_REPLY % forged)
    st = statuses(report)
    assert st["test_second"] is Status.error, st
    assert st["test_first"] is Status.passed and st["test_third"] is Status.passed, st


# -- collected sessions: the test side's fork server collects once per version --

STATE_TESTS = '''
import os
from submission import f

SEEN = []                      # module state: each submission must find it as imported
IMPORTED_BY = os.getpid()

def test_first():
    SEEN.append(f(1))
    assert SEEN == [2]

def test_second():
    SEEN.append(f(2))
    assert SEEN == [2, 3]
'''


ALONE_TESTS = '''
import os
from submission import f

# Imported once per version by the collected session's server: it must see
# no process but its own pid namespace's, like any test job.
AT_IMPORT = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())

def test_alone():
    assert f(1) == 2
    assert set(AT_IMPORT) <= {1, 2}, AT_IMPORT
'''


@pytest.fixture
def tmpl_kit(make_kit) -> GradingKit:
    kit = make_kit()
    kit.add("state", {
        "assignment.toml": 'title = "state"\nkind = "pytest"\nmax_points = 2\n',
        "tests/test_state.py": STATE_TESTS,
        "solution/submission.py": "def f(n):\n    return n + 1\n",
    })
    kit.add("alone", {  # what the instructor's module sees where it is imported
        "assignment.toml": 'title = "alone"\nkind = "pytest"\nmax_points = 1\n',
        "tests/test_alone.py": ALONE_TESTS,
        "solution/submission.py": "def f(n):\n    return n + 1\n",
    })
    kit.add("value", {  # the tests read a value at import: that takes the submission itself
        "assignment.toml": 'title = "value"\nkind = "pytest"\nmax_points = 1\n',
        "tests/test_value.py": "from submission import LIMIT, f\n\ndef test_f():\n    assert f(LIMIT) == 11\n",
        "solution/submission.py": "LIMIT = 10\ndef f(n):\n    return n + 1\n",
    })
    return kit


def test_every_submission_of_a_version_runs_from_one_collected_session(tmpl_kit, monkeypatch):
    from xgrader.backends import forkserver
    servers = tmpl_kit.backend.forkservers
    before = set(servers.template_pids())
    sent = []
    spawn = forkserver.Zygote.spawn
    monkeypatch.setattr(forkserver.Zygote, "spawn",
                        lambda self, job, *a: sent.append(job.template) or spawn(self, job, *a))
    good = "def f(n):\n    return n + 1\n"
    assert tmpl_kit.grade("state", good).score == 2          # the reference run, then a collected session
    new = set(servers.template_pids()) - before
    assert len(new) == 1
    for code, score in ((good, 2), ("def f(n):\n    return n\n", 0), (good, 2)):
        report = tmpl_kit.grade("state", code)
        # Module state as the tests left it in one submission never reaches the next.
        assert report.score == score, statuses(report)
    assert set(servers.template_pids()) - before == new       # the same server throughout
    assert [t for t in sent if t] and len({t for t in sent if t}) == 1


def test_names_that_do_not_fit_the_collected_session_get_a_plain_run(tmpl_kit, monkeypatch):
    from xgrader.backends import forkserver
    tmpl_kit.grade("state", "def f(n):\n    return n + 1\n")
    sent = []
    spawn = forkserver.Zygote.spawn
    monkeypatch.setattr(forkserver.Zygote, "spawn",
                        lambda self, job, *a: sent.append(job.template) or spawn(self, job, *a))
    # `f` is a class here: imported into a fresh session it is a class's proxy.
    report = tmpl_kit.grade("state", "class f:\n    def __init__(self, n):\n        pass\n")
    assert report.score == 0 and all(t.status is Status.failed for t in report.tests), statuses(report)
    student, *tests = sent
    assert student is None and tests[0] is not None and tests[-1] is None, sent  # refused, then a plain run
    sent.clear()
    report = tmpl_kit.grade("state", "def g(n):\n    return n + 1\n")   # f missing
    assert report.score == 0 and report.outcome is Outcome.missing_function, statuses(report)
    assert len(sent) == 3 and sent[-1] is None, sent
    sent.clear()
    assert tmpl_kit.grade("state", "def f(n):\n    return n + 1\n\ndef g():\n    pass\n").score == 2
    assert len(sent) == 2 and sent[-1] is not None   # other names besides: still the collected session


def test_tests_that_read_a_value_at_import_run_plain(tmpl_kit):
    servers = tmpl_kit.backend.forkservers
    before = set(servers.template_pids())
    assert tmpl_kit.grade("value", "LIMIT = 10\ndef f(n):\n    return n + 1\n").score == 1
    assert tmpl_kit.grade("value", "LIMIT = 10\ndef f(n):\n    return n + 1\n").score == 1
    assert tmpl_kit.grade("value", "LIMIT = 9\ndef f(n):\n    return n + 1\n").score == 0
    live = [p for p in set(servers.template_pids()) - before if _state(p) != "Z"]
    assert live == []  # its collection failed: that server is gone, the jobs ran plain


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return "gone"


def test_the_collected_session_sees_no_other_process(tmpl_kit):
    for _ in range(3):  # the reference run (a plain job), then the collected session's jobs
        report = tmpl_kit.grade("alone", "def f(n):\n    return n + 1\n")
        assert report.score == 1, report.tests


LONE_TESTS = """
import os
from submission import f

def test_lone():
    assert f(1) == 2
    # A collected session's test job has no init: it is pid 1 of its own pid
    # namespace and the only process there (a plain job is pid 2 under one).
    assert os.getpid() == 1
    assert sorted(int(p) for p in os.listdir("/proc") if p.isdigit()) == [1]
"""


def test_a_collected_session_job_is_pid_1_without_an_init(tmpl_kit):
    tmpl_kit.add("lone", {
        "assignment.toml": 'title = "lone"\nkind = "pytest"\nmax_points = 1\n',
        "tests/test_lone.py": LONE_TESTS,
        "solution/submission.py": "def f(n):\n    return n + 1\n",
    })
    for _ in range(2):  # the reference's plain run (under an init: its test fails), then collected jobs
        report = tmpl_kit.grade("lone", "def f(n):\n    return n + 1\n")
        assert report.score == 1, report.tests


def test_what_the_tests_set_up_at_import_reaches_every_submission(make_kit):
    """Environment variables set and files written while the tests are
    imported are there when they run, collected session or not."""
    kit = make_kit()
    kit.add("setup", {
        "assignment.toml": 'title = "setup"\nkind = "pytest"\nmax_points = 2\n',
        "tests/conftest.py": "import os\nos.environ['COURSE_MODE'] = 'exam'\n",
        "tests/test_env.py": "import os\nfrom submission import f\n\n"
                             "def test_env():\n    assert os.environ.get('COURSE_MODE') == 'exam' and f(1) == 2\n",
        "public_tests/test_file.py": "import pathlib\nfrom submission import f\n"
                                     "pathlib.Path('made_at_import.txt').write_text('42')\n\n"
                                     "def test_file():\n    assert pathlib.Path('made_at_import.txt').read_text() == '42'\n"
                                     "    assert f(41) == 42\n",
        "solution/submission.py": "def f(n):\n    return n + 1\n",
    })
    for _ in range(3):
        report = kit.grade("setup", "def f(n):\n    return n + 1\n")
        assert report.score == 2, statuses(report)


PLUGINS_UNUSED = """
from submission import f

def test_per_test_plugins_are_off(request):
    # No file of this assignment mentions what they serve: a collected
    # session's jobs run without them (names split so the text check misses them).
    names = ["log" + "ging-plugin", "war" + "nings", "unraisable" + "exception", "thread" + "exception"]
    assert f(1) == 2 and [n for n in names if request.config.pluginmanager.has_plugin(n)] == []
    # Nothing here writes below sys.stdout: capture at sys level.
    assert request.config.pluginmanager.getplugin("capturemanager")._method == "sys"

def test_capsys_still_sees_the_student_output(capsys):
    assert f(3) == 4
    print("from the test")
    assert capsys.readouterr().out == "from the test\\n"
"""

PLUGINS_USED = """
import logging
import os
import warnings

import pytest
from submission import f

def test_caplog(caplog):
    with caplog.at_level(logging.INFO):
        logging.getLogger("course").info("f gave %s", f(1))
    assert "f gave 2" in caplog.text

@pytest.mark.filterwarnings("error")
def test_a_filterwarnings_mark_applies():
    with pytest.raises(UserWarning):
        warnings.warn("careful")
    assert f(2) == 3

def test_capfd_sees_descriptor_writes(capfd, request):
    os.write(1, b"low level\\n")
    assert capfd.readouterr().out == "low level\\n"
    assert request.config.pluginmanager.getplugin("capturemanager")._method == "fd"
"""


def test_per_test_plugins_are_dropped_only_where_no_test_file_mentions_them(make_kit):
    kit = make_kit()
    for name, tests in (("unused", PLUGINS_UNUSED), ("used", PLUGINS_USED)):
        kit.add(name, {
            "assignment.toml": f'title = "{name}"\nkind = "pytest"\nmax_points = 3\n',
            f"tests/test_{name}.py": tests,
            "solution/submission.py": "def f(n):\n    return n + 1\n",
        })
    for _ in range(2):  # the reference's plain run (with every plugin), then collected jobs
        report = kit.grade("unused", "def f(n):\n    return n + 1\n")
        assert report.score == 3 and len(report.tests) == 2, statuses(report)
        report = kit.grade("used", "def f(n):\n    return n + 1\n")
        assert report.score == 3 and len(report.tests) == 3, statuses(report)
