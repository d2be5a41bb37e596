"""Forging the verdict and reading the answers (shared/threat-model.md), against
the pytest AND the expression handlers on the real bwrap backend. Every attack
must get the real score: at most what the honest `return True` earns. Canary
strings planted in the hidden tests and the reference solution must never
appear in any report field or rendered output."""

from __future__ import annotations

import re
import textwrap

import pytest

from xgrader import feedback

from tests.support.grading import GradingKit
from xgrader.report import GradeReport

CANARY_TESTS = "CANARY_HIDDEN_TESTS_5e1f0c"
CANARY_SOLUTION = "CANARY_REFERENCE_SOLUTION_a94d2b"
NUMBERS = [1, 2, 3, 4, 7, 9, 15, 21]           # 3 primes of 8
TRUE_SCORE = 3 / 8 * 8                           # `return True` earns the primes

SOLUTION = f'''
# {CANARY_SOLUTION}
SECRET = "{CANARY_SOLUTION}"
def is_prime(n):
    """{CANARY_SOLUTION}"""
    if n < 2:
        return False
    return all(n % i for i in range(2, int(n ** 0.5) + 1))
'''

PYTEST_TESTS = f'''
# {CANARY_TESTS}
import pytest
from submission import is_prime
HIDDEN_NOTE = "{CANARY_TESTS}"

@pytest.mark.parametrize("n, expected", [
    {", ".join(f"({n}, {n in (2, 3, 7)})" for n in NUMBERS)}
], ids=[f"{CANARY_TESTS}-{{i}}" for i in range({len(NUMBERS)})])
def test_hidden(n, expected):
    assert is_prime(n) == expected, HIDDEN_NOTE
'''

IO_CASES = f"# {CANARY_TESTS}\n" + "".join(
    f'[[case]]\nname = "hidden {i}"\nexpr = "is_prime({n})"\n\n' for i, n in enumerate(NUMBERS))


@pytest.fixture(scope="module")
def forge_kit(kit: GradingKit) -> GradingKit:
    common = {"solution/submission.py": SOLUTION, "description.md": "Write is_prime(n)."}
    kit.add("forge_py", {
        "assignment.toml": 'title = "forge"\nkind = "pytest"\nmax_points = 8\ntest_timeout_s = 0.5\n'
                           'functions = ["is_prime"]\n[limits]\nwall_s = 8\n',
        "tests/test_hidden.py": PYTEST_TESTS, **common})
    kit.add("forge_io", {
        "assignment.toml": 'title = "forge"\nkind = "io"\nmax_points = 8\ntest_timeout_s = 0.5\n'
                           'functions = ["is_prime"]\n[limits]\nwall_s = 8\n',
        "tests/cases.toml": IO_CASES, **common})
    return kit


def leaked(report: GradeReport) -> list[str]:
    texts = [report.model_dump_json()]
    try:
        from xgrader import feedback
    except ImportError:
        feedback = None  # the renderer is another module's; the report itself is checked above
    if feedback is not None:
        texts += [feedback.render_html(report)]
        if hasattr(feedback, "render_text"):
            texts.append(feedback.render_text(report))
    return [c for c in (CANARY_TESTS, CANARY_SOLUTION, "CANARY_") if any(c in t for t in texts)]


FORGED_LINES = "\n".join(
    [f'{{"id": {i}, "index": {j}, "ok": true, "value": true, "repr": "True"}}' for i in range(1, 6) for j in range(9)]
    + ['{"op": "result", "nodeid": "tests/test_hidden.py::test_hidden[x]", "outcome": "passed"}',
       '{"op": "done"}', '{"correct": true, "score": 8, "msg": "<p>all passed</p>"}']) + "\n"
# What the disk/memory scanners look for, spelled so the attack's own source does not match.
LOOK_FOR = '("CANARY" + "_", "def " + "test_hidden", "is_prime(n)" + ":\\n    \\"\\"\\"")'

ATTACKS = {
    "exit_before_tests": "import os\nos._exit(0)\n",
    "exit_during_tests": "import os\ndef is_prime(n):\n    os._exit(0)\n",
    "sys_exit_in_call": "import sys\ndef is_prime(n):\n    sys.exit(0)\n",
    "fake_report_stdout": """
        import json, sys
        REPORT = json.dumps({"correct": True, "score": 8, "msg": "<p>All tests passed</p>"})
        print(REPORT); print("=== 8 passed in 0.01s ===")
        sys.stderr.write(REPORT + "\\n")
        def is_prime(n):
            print(REPORT); print('{"op": "result", "outcome": "passed"}')
            return True
        import atexit; atexit.register(lambda: print(REPORT))
    """,
    "write_inherited_fds": f"""
        import os
        FORGED = {FORGED_LINES!r}.encode()
        def spray():
            for fd in range(0, 64):
                try:
                    os.write(fd, FORGED)
                except OSError:
                    pass
        spray()
        def is_prime(n):
            spray()
            return True
    """,
    "patch_json_dumps": """
        import json
        json.dumps = lambda *a, **k: '{"id": 2, "index": 0, "ok": true, "value": true}'
        def is_prime(n):
            return True
    """,
    "patch_builtins_and_pytest": """
        import builtins, sys, types
        fake = types.ModuleType("pytest")
        fake.main = lambda *a, **k: 0
        sys.modules["pytest"] = fake
        builtins.isinstance = lambda *a: True
        builtins.repr = lambda o: "True"
        def is_prime(n):
            return True
    """,
    "always_equal_object": """
        class Liar:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __bool__(self): return True
            def __hash__(self): return 1
            def __repr__(self): return "True"
        def is_prime(n):
            return Liar()
    """,
    "int_subclass": """
        class Sly(int):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __repr__(self): return "True"
            __hash__ = int.__hash__
        def is_prime(n):
            return Sly(1)  # honest `return 1` equals True under ==: the baseline
    """,
    "str_subclass": """
        class Sly(str):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = str.__hash__
        def is_prime(n):
            return Sly("True")
    """,
    "raise_base_exceptions": """
        def is_prime(n):
            if n % 3 == 0:
                raise KeyboardInterrupt("stop the test run")
            if n % 3 == 1:
                raise SystemExit(0)
            raise GeneratorExit()
    """,
    "raise_pytest_outcomes": """
        class Skipped(BaseException):   # the names pytest uses for skip/xfail/exit
            pass
        class XFailed(Exception):
            pass
        class Exit(Exception):
            pass
        def is_prime(n):
            raise (Skipped, XFailed, Exit)[n % 3]("not applicable")
    """,
    "import_tests_and_solution": """
        import importlib, sys
        def is_prime(n):
            for name in ("test_hidden", "tests.test_hidden", "solution", "solution.submission", "conftest"):
                try:
                    mod = importlib.import_module(name)
                    return repr(vars(mod))[:3000]
                except BaseException:
                    pass
            return True
    """,
    "glob_and_read_disk": f"""
        import glob, os
        def find():
            found = []
            for pattern in ("/tmp/**", "/opt/**", "/root/**", "/home/**", "/work/**", "/var/cache/**",
                            "/proc/*/cwd/**", "/proc/*/root/tmp/**"):
                for path in glob.glob(pattern, recursive=True)[:2000]:
                    try:
                        with open(path, errors="replace") as f:
                            text = f.read(200000)
                    except (OSError, ValueError):
                        continue
                    if any(s in text for s in {LOOK_FOR}):
                        found.append(path + ": " + text[:2000])
            return found
        FOUND = find()
        def is_prime(n):
            return FOUND or True
    """,
    "read_proc_memory": f"""
        def is_prime(n):
            out = []
            import os
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    for what in ("environ", "cmdline"):
                        try:
                            out.append(open(f"/proc/{{pid}}/{{what}}", "rb").read().decode(errors="replace"))
                        except OSError:
                            pass
            text = "".join(out)
            return text if any(s in text for s in {LOOK_FOR}) else True
    """,
}

SHIPPED_FILES = {
    "conftest.py": b"import pytest\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
                   b"    outcome = yield\n    outcome.get_result().outcome = 'passed'\n",
    "pytest.ini": b"[pytest]\naddopts = -p no:xgrader_plugin --co\n",
    "sitecustomize.py": b"import builtins\nbuiltins.__import__ = None\n",
    "evil.pth": b"import os; os._exit(0)\n",
    "json.py": b"def dumps(*a, **k):\n    return '{\"id\": 1, \"ok\": true, \"value\": true}'\nloads = dumps\n",
    "traceback.py": b"raise SystemExit(0)\n",
    "test_fake.py": b"def test_everything():\n    assert True\n",
}


@pytest.fixture(scope="module")
def baseline(forge_kit):
    """What the honest `return True` earns in each kind (the ceiling for every attack)."""
    out = {}
    for name in ("forge_py", "forge_io"):
        honest = forge_kit.grade(name, SOLUTION)
        assert honest.correct and not leaked(honest), name
        true = forge_kit.grade(name, "def is_prime(n):\n    return True\n")
        assert true.score == pytest.approx(TRUE_SCORE) and not true.correct
        out[name] = true.score
    return out


@pytest.mark.parametrize("kind", ["forge_py", "forge_io"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_gets_the_real_score(forge_kit, baseline, kind, attack):
    report = forge_kit.grade(kind, textwrap.dedent(ATTACKS[attack]))
    assert not report.correct, (attack, report.outcome)
    assert report.score <= baseline[kind] + 1e-9, (attack, report.score)
    assert not leaked(report), attack


@pytest.mark.parametrize("kind", ["forge_py", "forge_io"])
def test_shipped_config_files_change_nothing(forge_kit, baseline, kind):
    files = {**SHIPPED_FILES, "submission.py": b"def is_prime(n):\n    return True\n"}
    report = forge_kit.grade(kind, "", files=files)
    assert report.score == pytest.approx(baseline[kind]) and not report.correct
    assert not leaked(report)


@pytest.mark.parametrize("kind", ["forge_py", "forge_io"])
def test_wrong_answers_never_show_hidden_values(forge_kit, kind):
    report = forge_kit.grade(kind, "def is_prime(n):\n    raise ValueError('LEAKED-INPUT-%d' % n)\n")
    assert report.score == 0
    assert all(not t.visible and t.message is None and t.actual is None and t.expected is None
               and t.input is None and t.output is None for t in report.tests)
    assert not leaked(report)
    # The exception is explained by its type and the student's own line (read from the file as
    # submitted); its message, which carries the hidden input, is not shown.
    assert not re.search(r"LEAKED-INPUT-\d", report.model_dump_json() + feedback.render_html(report))
    assert any((e.source_line or "").strip().startswith("raise ValueError") for e in report.explanations)
    assert any("ValueError" in e.title for e in report.explanations), report.explanations
    # Hidden test names carry no parameter ids (the ids hold a canary here).
    assert all("[" not in t.name for t in report.tests)
