"""Built-in explanations (xgrader.explain), graded for real on bwrap with
every test hidden: each kind says something specific (a line, a name, a
type, a behaviour) and no message ever holds a hidden input or expected
value (unique canary values are planted in every hidden case)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import nbformat
import pytest

from xgrader import feedback
from xgrader.report import GradeReport, Outcome
from xgrader.report import TestStatus as Status

pytestmark = pytest.mark.usefixtures("kit")

# Canaries: the hidden inputs and expected values of the assignments below.
CANARIES = ["73914", "58206", "41937", "zebu", "quagga", "418", "733", "1151", "7919"]

MIX = {
    "assignment.toml": """
        title = "Mix"
        kind = "io"
        functions = ["sum_digits", "is_even", "pairs"]
        test_timeout_s = 1.0
        [limits]
        wall_s = 6
    """,
    "tests/cases.toml": """
        [[case]]
        name = "digits"
        expr = "sum_digits(73914)"
        [[case]]
        name = "negative digits"
        expr = "sum_digits(-58206)"
        [[case]]
        name = "even"
        expr = "is_even(58206)"
        [[case]]
        name = "odd"
        expr = "is_even(7919)"
        [[case]]
        name = "pairs"
        expr = "pairs(['zebu', 'quagga', 'zebu'])"
    """,
    "solution/submission.py": """
        def sum_digits(n):
            return sum(int(c) for c in str(abs(n)))

        def is_even(n):
            return n % 2 == 0

        def pairs(items):
            counts = {}
            for x in items:
                counts[x] = counts.get(x, 0) + 1
            return sorted(counts.items())
    """,
}
GOOD = MIX["solution/submission.py"]


def _msg(report: GradeReport) -> str:
    msg = feedback.render_html(report)
    ET.fromstring(msg)   # well-formed
    lowered = msg.lower()
    for canary in CANARIES:
        assert canary not in lowered, (canary, msg)
    return msg


def _only(report: GradeReport, signature: str):
    found = [e for e in report.explanations if e.signature == signature]
    assert found, [(e.signature, e.title) for e in report.explanations]
    assert found[0].specific
    return found[0]


def _replace(code: str, old: str, new: str) -> str:
    import textwrap
    code = textwrap.dedent(code).lstrip("\n")
    assert old in code
    return code.replace(old, new)


@pytest.fixture(scope="module")
def mix(kit):
    kit.add("mix", MIX)
    return kit


def grade(kit, code: str, name: str = "mix", files=None) -> GradeReport:
    report = kit.grade(name, code, files=files)
    _msg(report)
    return report


def test_runtime_error_shows_the_line_and_a_safe_message(mix):
    code = _replace(GOOD, "    return sum(int(c) for c in str(abs(n)))",
                    "    if n < 0:\n        raise ValueError('negative numbers are not allowed')\n"
                    "    lookup = {}\n    return lookup[n]")
    r = grade(mix, code)
    key = next(e for e in r.explanations if "KeyError" in e.title)
    assert key.line == 5 and key.source_line.strip() == "return lookup[n]" and key.specific
    assert "73914" not in key.detail and "a key that is not in the dictionary" in key.detail
    value = next(e for e in r.explanations if "ValueError" in e.title)
    # The student's own literal message says nothing hidden: shown as is.
    assert "negative numbers are not allowed" in value.detail and value.line == 3


@pytest.mark.parametrize("raise_with", ["str(n)", "f'bad value {n}'", "str(n)[::-1]", "'x' * (n % 7 + 2)",
                                        "repr([n, n + 1])"])
def test_messages_built_from_hidden_inputs_are_paraphrased(mix, raise_with):
    code = _replace(GOOD, "    return sum(int(c) for c in str(abs(n)))", f"    raise ValueError({raise_with})")
    r = grade(mix, code)
    e = next(e for e in r.explanations if "ValueError" in e.title)
    assert "not shown" in e.detail and e.line == 2 and e.specific


def test_the_source_line_comes_from_the_submitted_file(mix):
    # The code rewrites its own file to smuggle the input into the shown line: the host reads the original.
    code = _replace(GOOD, "    return sum(int(c) for c in str(abs(n)))",
                    "    open(__file__, 'w').write(('x = %d\\n' % n) * 5)\n    raise ValueError('boom')")
    r = grade(mix, code)
    e = next(e for e in r.explanations if "ValueError" in e.title)
    assert e.source_line.strip() == "raise ValueError('boom')"


def test_did_you_mean_for_name_and_attribute_errors(mix):
    r = grade(mix, _replace(GOOD, "    return n % 2 == 0", "    return Flase if n % 2 else True"))
    e = _only(r, "runtime_error")
    assert "NameError" in e.title and "Did you mean" in e.detail and e.source_line.strip().startswith("return")
    r = grade(mix, _replace(GOOD, "    return sorted(counts.items())", "    return sorted(counts.itmes())"))
    assert "Did you mean: 'items'?" in _only(r, "runtime_error").detail


def test_returns_none_names_the_path_without_return(mix):
    r = grade(mix, _replace(GOOD, "    return sum(int(c) for c in str(abs(n)))",
                            "    if n > 10 ** 9:\n        return 0"))
    e = _only(r, "returns_none")
    assert e.line == 2 and "`if` on line 2 is false" in e.detail
    r = grade(mix, _replace(GOOD, "    return sorted(counts.items())", "    sorted(counts.items())"))
    assert "has no `return`" in _only(r, "returns_none").detail


def test_prints_instead_of_returning(mix):
    r = grade(mix, _replace(GOOD, "    return sum(int(c) for c in str(abs(n)))",
                            "    print(sum(int(c) for c in str(abs(n))))"))
    e = _only(r, "prints_instead_of_returning")
    assert e.line == 2 and e.source_line.strip().startswith("print(")


def test_wrong_types_are_named_in_general_terms(mix):
    cases = {
        ("    return sum(int(c) for c in str(abs(n)))", "    return str(sum(int(c) for c in str(abs(n))))"):
            "str_not_number",
        ("    return sum(int(c) for c in str(abs(n)))", "    return sum(int(c) for c in str(abs(n))) / 1"):
            "float_vs_int",
        ("    return n % 2 == 0", "    return 1 if n % 2 == 0 else 0"): "bool_vs_int",
        ("    return sorted(counts.items())", "    return [list(p) for p in sorted(counts.items())]"):
            "list_vs_tuple",
        ("    return sorted(counts.items())", "    return []"): "empty_result",
    }
    for (old, new), signature in cases.items():
        r = grade(mix, _replace(GOOD, old, new))
        e = _only(r, signature)
        assert "hidden test" in e.title


def test_mutated_argument(mix):
    r = grade(mix, _replace(GOOD, "    counts = {}", "    items.sort()\n    items.pop()\n    counts = {}"))
    e = _only(r, "mutated_argument")
    assert e.line == 8 and "items.sort()" in e.source_line


def test_called_input(mix):
    r = grade(mix, _replace(GOOD, "    return n % 2 == 0", "    n = int(input('number? '))\n    return n % 2 == 0"))
    e = _only(r, "called_input")
    assert e.line == 5 and "input(" in e.source_line


def test_time_limit_names_the_loop_from_a_stack_sample(mix):
    code = _replace(GOOD, "    return sum(int(c) for c in str(abs(n)))",
                    "    total = 0\n    while n != 0:\n        total += n % 10\n        n //= 10\n    return total")
    r = grade(mix, code)
    assert r.outcome is Outcome.time_limit
    e = _only(r, "time_limit")
    assert e.title.startswith("Still running after 1 s")
    assert "`while` loop on line 3" in e.detail and e.line == 3 and e.source_line.strip() == "while n != 0:"
    assert not any(x.title == "Time limit exceeded" for x in r.explanations)   # the generic note is replaced


def test_recursion_names_the_recursive_line(mix):
    code = _replace(GOOD, "    return sum(int(c) for c in str(abs(n)))",
                    "    if n == 0:\n        return 0\n    return n % 10 + sum_digits(n // 10)")
    r = grade(mix, code)
    e = _only(r, "recursion")
    assert e.line == 4 and "sum_digits(n // 10)" in e.source_line and "line 4" in e.detail


def test_missing_function_is_one_sentence_without_name_error_noise(mix):
    code = _replace(GOOD, "def sum_digits(n):", "def sumdigits(n):")
    r = grade(mix, code)
    assert r.explanations[0].title == "Missing function: sum_digits"
    assert "sumdigits" in r.explanations[0].detail
    assert len(r.explanations) == 1
    assert "NameError" not in feedback.render_text(r)
    statuses = {t.name: t.status for t in r.tests}
    assert statuses["digits"] is Status.not_run and statuses["even"] is Status.passed


def test_wrong_arguments(mix):
    r = grade(mix, _replace(GOOD, "def is_even(n):", "def is_even():\n    n = 2"))
    e = _only(r, "wrong_arguments")
    assert "takes 0 positional arguments but 1 was given" in e.detail


def test_switched_off_per_assignment(mix, kit):
    off = {**MIX, "assignment.toml": MIX["assignment.toml"] + "[feedback]\nexplain = false\n"}
    kit.add("mix_off", off)
    code = _replace(GOOD, "    return sum(int(c) for c in str(abs(n)))", "    return str(n)[0] + Flase")
    r = grade(kit, code, "mix_off")
    e = next(e for e in r.explanations if "NameError" in e.title)
    assert e.title == "Your code raised NameError in 2 hidden tests" and not e.specific and e.line is None
    some = {**MIX, "assignment.toml": MIX["assignment.toml"] + '[feedback]\nexplain_skip = ["returns_none"]\n'}
    kit.add("mix_some", some)
    r = grade(kit, _replace(GOOD, "    return sorted(counts.items())", "    sorted(counts.items())"), "mix_some")
    assert not any(e.signature == "returns_none" for e in r.explanations)


# -- programs -------------------------------------------------------------------

STATS = {
    "assignment.toml": """
        title = "Stats"
        kind = "io"
        entry = "main.py"
        test_timeout_s = 1.0
        [limits]
        wall_s = 3
    """,
    "tests/cases.toml": """
        [[case]]
        stdin = "418\\n733\\n"
    """,
    "solution/main.py": """
        import sys
        print(sum(int(line) for line in sys.stdin if line.strip()))
    """,
}


@pytest.fixture(scope="module")
def stats(kit):
    kit.add("stats", STATS)
    return kit


def test_program_extra_output_and_prompts(stats):
    r = grade(stats, "import sys\nnums = [int(x) for x in sys.stdin]\nprint('numbers:', len(nums))\n"
                     "print(sum(nums))\n", "stats")
    e = _only(r, "extra_output")
    assert "1 extra line" in e.detail and "such as" not in e.detail   # 'numbers: 2' holds a number: not shown
    r = grade(stats, "a = int(input('first: '))\nb = int(input('second: '))\nprint(a + b)\n", "stats")
    e = _only(r, "extra_output")
    assert "prompt" in e.title and e.line == 1


def test_program_time_limit_sample(stats):
    r = grade(stats, "import sys\ntotal = 0\nwhile True:\n    total += 1\n", "stats")
    e = _only(r, "time_limit")
    assert e.line == 3 and "`while` loop on line 3" in e.detail


def test_program_reading_past_the_input(stats):
    r = grade(stats, "a = int(input())\nb = int(input())\nc = int(input())\nprint(a + b + c)\n", "stats")
    e = next(e for e in r.explanations if "past the end" in e.title)
    assert e.line == 3 and e.specific


# -- pytest kind ------------------------------------------------------------------

BANK = {
    "assignment.toml": """
        title = "Bank"
        kind = "pytest"
        functions = ["Account", "spread"]
        test_timeout_s = 1.0
        [limits]
        wall_s = 10
        [[tests]]
        pattern = "test_withdraw_label"
        visible = true
    """,
    "tests/test_bank.py": """
        import pytest
        from submission import Account, InsufficientFunds, spread

        def test_withdraw_label():
            acct = Account(100)
            assert acct.withdraw(50) == 50

        def test_refuses_overdraft():
            acct = Account(10)
            with pytest.raises(InsufficientFunds):
                acct.withdraw(7919)

        def test_spread():
            assert spread([418, 733]) == [418, 733, 1151]
    """,
    "solution/submission.py": """
        class InsufficientFunds(Exception):
            pass

        class Account:
            def __init__(self, balance):
                self.balance = balance

            def withdraw(self, amount):
                if amount > self.balance:
                    raise InsufficientFunds("not enough money")
                self.balance -= amount
                return self.balance

        def spread(values):
            return values + [sum(values)]
    """,
}


@pytest.fixture(scope="module")
def bank(kit):
    kit.add("bank", BANK)
    return kit


def test_method_calls_show_as_written(bank):
    code = BANK["solution/submission.py"].replace("return self.balance", "return self.balance + 1")
    r = grade(bank, code, "bank")
    t = next(t for t in r.tests if t.name.endswith("test_withdraw_label"))
    assert t.status is Status.failed and t.input == "acct.withdraw(50)"


def test_missing_exception_class_is_explained(bank):
    code = _replace(BANK["solution/submission.py"], "class InsufficientFunds(Exception):\n    pass", "") \
        .replace('raise InsufficientFunds("not enough money")', 'raise ValueError("not enough money")')
    r = grade(bank, code, "bank")
    text = feedback.render_text(r)
    assert "not iterable" not in text and "Expected a BaseException type" not in text
    assert any(e.title == "Missing class: InsufficientFunds" for e in r.explanations)
    t = next(t for t in r.tests if t.test_id.endswith("test_refuses_overdraft"))
    assert t.status is Status.not_run


def test_pytest_kind_mutation_and_time_limit(bank):
    code = BANK["solution/submission.py"].replace("return values + [sum(values)]",
                                                  "values.append(sum(values))\n            return values[:2]")
    r = grade(bank, code, "bank")
    e = _only(r, "mutated_argument")
    assert "values.append" in e.source_line
    code = BANK["solution/submission.py"].replace("return values + [sum(values)]",
                                                  "i = 0\n            while i < len(values):\n                pass\n"
                                                  "            return values")
    r = grade(bank, code, "bank")
    e = _only(r, "time_limit")
    assert "`while` loop on line" in e.detail and "i < len(values)" in e.source_line


# -- notebooks and preludes ---------------------------------------------------------

def _notebook(*cells: str) -> bytes:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{i}"
    return nbformat.writes(nb).encode()


def test_notebook_cells_in_locations_and_a_notebook_reference(kit):
    kit.add("nb", {
        "assignment.toml": 'title = "NB"\nkind = "io"\nfunctions = ["half"]\n',
        "tests/cases.toml": '[[case]]\nexpr = "half(7919)"\n[[case]]\nexpr = "half(418)"\n',
    })
    (kit.root / "nb" / "solution").mkdir()
    (kit.root / "nb" / "solution" / "submission.ipynb").write_bytes(_notebook("x = 1", "def half(n):\n    return n / 2"))
    upload = _notebook("import math", "print('hi')", "def half(n):\n    m = n // 0\n    return m")
    r = grade(kit, "", "nb", files={"homework.ipynb": upload})
    e = _only(r, "runtime_error")
    assert e.location == "cell 3, line 2" and "cell 3, line 2" in e.detail
    assert "Cell 3, line 2" in feedback.render_text(r)
    ok = kit.grade("nb", "", files={"homework.ipynb": _notebook("def half(n):\n    return n / 2")})
    assert ok.correct   # expected values came from the notebook reference solution


def test_prelude_runs_first_and_line_numbers_stay_the_students(kit):
    kit.add("pre", {
        "assignment.toml": 'title = "Prelude"\nkind = "io"\nprelude = "prelude.py"\nfunctions = ["area"]\n',
        "prelude.py": "import math\n\ndef square(x):\n    return x * x\n",
        "tests/cases.toml": '[[case]]\nexpr = "area(7919)"\n',
        "solution/submission.py": "def area(r):\n    return math.pi * square(r)\n",
    })
    assert kit.grade("pre", "def area(r):\n    return math.pi * square(r)\n").correct
    r = grade(kit, "def area(r):\n    return math.pi * sqare(r)\n", "pre")
    e = _only(r, "runtime_error")
    assert e.line == 2 and "Did you mean: 'square'?" in e.detail


def test_staff_detail_holds_hidden_values_outside_the_message(mix):
    from xgrader import coverage
    r = grade(mix, _replace(GOOD, "    return n % 2 == 0", "    return n % 2 == 1"))
    rec = coverage.record("s.py", r)
    staff = json.dumps(rec["tests"])
    assert "58206" in staff and "7919" in staff            # staff sees the hidden inputs...
    assert "58206" not in rec["msg"] and "7919" not in rec["msg"]   # ...the student never does
    text = coverage.staff_text(r)
    assert "is_even(58206)" in text and "Staff view" in text


# -- the runner's part on every backend ----------------------------------------------

def test_runner_evidence_on_every_backend(backend, tmp_path):
    """Error frames, stack samples at a timeout, arguments changed in place and
    the prelude come from the in-sandbox runner: the same on each backend."""
    from tests.support.grading import GradingKit

    kit = GradingKit(tmp_path / "handlers", backend, tmp_path / "cache")
    # One looping case, last: a container restarted under load must not eat the other cases' time.
    cases = MIX["tests/cases.toml"].split("[[case]]")
    kit.add("mixb", {**MIX, "assignment.toml": MIX["assignment.toml"].replace('"pairs"]', '"pairs"]\n'
                                                                              'prelude = "prelude.py"')
                     .replace("wall_s = 6", "wall_s = 10"),
                     "tests/cases.toml": "[[case]]".join([cases[0], cases[3], cases[4], cases[5], cases[1]]),
                     "prelude.py": "def double(n):\n    return 2 * n\n"})
    code = _replace(GOOD, "    return sum(int(c) for c in str(abs(n)))",
                    "    while n != 0:\n        n = double(n) // 2\n    return 0")
    code = _replace(code, "    return n % 2 == 0", "    return Flase")
    code = _replace(code, "    counts = {}", "    items.sort()\n    items.pop()\n    counts = {}")
    r = grade(kit, code, "mixb")
    assert "`while` loop on line 2" in _only(r, "time_limit").detail
    assert _only(r, "runtime_error").line == 7 and "Did you mean: 'False'?" in _only(r, "runtime_error").detail
    assert not any(e.signature == "missing_function" for e in r.explanations)   # the prelude ran
    assert _only(r, "mutated_argument").line == 10


def test_prelude_in_program_cases(kit):
    kit.add("preprog", {
        "assignment.toml": 'title = "Prelude program"\nkind = "io"\nentry = "main.py"\nprelude = "prelude.py"\n',
        "prelude.py": "def square(x):\n    return x * x\n",
        "tests/cases.toml": '[[case]]\nstdin = "418\\n"\n',
        "solution/main.py": "print(square(int(input())))\n",
    })
    assert kit.grade("preprog", "print(square(int(input())))\n").correct
    r = grade(kit, "n = int(input())\nprint(sqare(n))\n", "preprog")
    e = _only(r, "runtime_error")
    assert e.line == 2 and "Did you mean: 'square'?" in e.detail
