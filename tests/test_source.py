"""The student's source is parsed on the host (xgrader.source) for
explanations and code signatures: a hostile source must neither crash nor
stall the grader. Each hostile input below goes through every analysis, then
through a real grading on bwrap."""

from __future__ import annotations

import ast
import time

import pytest

from xgrader.assignment import FeedbackSignature, compile_pattern
from xgrader.signatures import code_lines
from xgrader.source import MAX_FILE_BYTES, Source, bounded_parse

HOSTILE = {
    "deep_parentheses": "x = " + "(" * 100_000 + "1" + ")" * 100_000 + "\n",
    "long_attribute_chain": "x = a" + ".b" * 100_000 + "\n",
    "long_sum": "x = " + "1 + " * 100_000 + "1\n",
    "deep_unary": "x = " + "-" * 100_000 + "1\n",
    "deep_lambda": "f = " + "lambda: " * 50_000 + "1\n",
    "deep_not": "x = " + "not " * 100_000 + "y\n",
    "nested_lists": "x = " + "[" * 180 + "]" * 180 + "\n",
    "nested_ifs": "".join("    " * i + "if x:\n" for i in range(99)) + "    " * 99 + "pass\n",
    "huge_file": "x = 1\n" * 300_000,
    "many_statements": "def f(n):\n" + "    n += 1\n" * (MAX_FILE_BYTES // 12) + "    return n\n",
    "nul_bytes": "def f(n):\n    return n\x00\n",
    "lone_surrogates": "def f(n):\n    return '\ud800'\n",
    "deep_nested_functions": "".join("    " * i + f"def f{i}():\n" for i in range(95)) + "    " * 95 + "return 1\n",
}
SIGNATURES = [
    FeedbackSignature(title="calls", calls=["sorted", "sort", "x.y.z"]),
    FeedbackSignature(title="uses", uses=["while", "recursion", "global", "eval", "import:os"]),
    FeedbackSignature(title="pattern", ast="for _ in range(len(_)): ..."),
    FeedbackSignature(title="pattern2", ast="_ + _"),
]


def _analyse(text: str) -> float:
    started = time.process_time()
    src = Source.of({"submission.py": text.encode("utf-8", "surrogatepass")}, "submission.py")
    src.trees, src.words, src.functions, src.calls, src.uses, src.recursive, src.string_constants
    for name in list(src.functions)[:5] + ["f", "missing"]:
        src.fall_through(name), src.prints_in(name), src.mutates_parameter(name), src.early_return(name)
    src.line("submission.py", 1), src.location("submission.py", 3), src.enclosing("submission.py", 2, (ast.For,))
    for sig in SIGNATURES:
        code_lines(sig, src)
    return time.process_time() - started


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_sources_are_bounded(name):
    assert _analyse(HOSTILE[name]) < 2.0


def test_bounds_drop_trees_that_are_too_big_or_deep():
    assert bounded_parse("x = 1\n" * 300_000) is None          # over MAX_FILE_BYTES: not parsed
    assert bounded_parse("x = " + "1 + " * 20_000 + "1\n") is None   # too deep for MAX_DEPTH
    assert bounded_parse("x = (1 +\n") is None                 # a syntax error
    assert bounded_parse("def f(n):\n    return n\n") is not None


def test_patterns_match_structure():
    src = Source.of({"submission.py": b"def f(xs):\n    for i in range(len(xs)):\n        print(xs[i])\n"
                     b"    return sorted(xs) + [1]\n"}, "submission.py")
    assert src.matches(compile_pattern("for _ in range(len(_)): ...")) == [2]
    assert src.matches(compile_pattern("sorted(_)")) == [4]
    assert src.matches(compile_pattern("while _: ...")) == []
    assert "sorted" in src.calls and "print" in src.calls and "for" in src.uses
    with pytest.raises(ValueError):
        compile_pattern("for x in")


@pytest.mark.parametrize("name", ["deep_parentheses", "long_sum", "deep_lambda", "huge_file", "nul_bytes"])
def test_hostile_sources_grade_normally(kit, name):
    kit.add("plain", {
        "assignment.toml": 'title = "Plain"\nkind = "io"\nfunctions = ["f"]\n'
                           '[[feedback.signatures]]\ntitle = "uses while"\nuses = ["while"]\n'
                           '[[feedback.signatures]]\ntitle = "range len"\nast = "range(len(_))"\n',
        "tests/cases.toml": '[[case]]\nexpr = "f(3)"\n',
        "solution/submission.py": "def f(n):\n    return n + 1\n",
    })
    started = time.monotonic()
    report = kit.grade("plain", HOSTILE[name] + "\ndef f(n):\n    return n\n")
    assert report.outcome.value in ("failed", "syntax_error", "runtime_error", "memory_limit", "time_limit")
    assert time.monotonic() - started < 30
