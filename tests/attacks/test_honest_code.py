"""Honest code the harness must not break: programs that use sys.stdout and
sys.stderr as the real text streams they are in a program (reconfigure(),
.buffer, fileno(), the stream's attributes, closing stdout after the
answer...) get full marks, on every backend, in every kind: pytest (the
call's output read through the `student_output` fixture), io expression
cases (value and `check = "output"`), io program cases (stdin to stdout).

Each program prints 2 * n and (as a function) returns it; the targets are
tests/attacks/assignments/printer{,_io,_main}."""

import pytest

from tests.attacks.conftest import leaks, report_texts
from xgrader.report import Outcome

# name -> (set-up at the top of the file, how the answer `v` is printed)
STREAM_USES = {
    "reconfigure": ("sys.stdout.reconfigure(encoding='utf-8', errors='strict', line_buffering=True)\n"
                    "sys.stderr.reconfigure(encoding='utf-8')\n",
                    "sys.stdout.reconfigure(line_buffering=False)\nprint(v)\n"),
    "buffer_write": ("", "sys.stdout.write(str(v))\nsys.stdout.flush()\nsys.stdout.buffer.write(b'\\n')\n"),
    "buffer_only": ("", "sys.stdout.buffer.write(b'%d\\n' % v)\n"),
    "fileno_write": ("", "sys.stdout.flush()\nos.write(sys.stdout.fileno(), b'%d\\n' % v)\n"),
    "stream_attributes": ("", "s = sys.stdout\n"
                              "assert s.fileno() == 1 and os.fstat(s.fileno()) and sys.stderr.fileno() == 2\n"
                              "assert s.encoding.lower().replace('-', '') == 'utf8' and isinstance(s.errors, str)\n"
                              "assert s.isatty() is False and os.isatty(s.fileno()) is False\n"
                              "assert s.writable() and not s.readable() and s.newlines is None\n"
                              "assert s.line_buffering in (True, False) and s.name == '<stdout>' and s.mode == 'w'\n"
                              "assert not s.closed and sys.stdin.isatty() is False\n"
                              "s.writelines([str(v), '\\n'])\n"),
    "close_after_answer": ("", "print(v)\nsys.stdout.close()\n"),
    "bound_at_import": ("write = sys.stdout.write\n", "write('%d\\n' % v)\n"),
    "stderr_tools": ("import faulthandler, logging\nfaulthandler.enable()\n"
                     "logging.basicConfig(level=logging.INFO)\n",
                     "logging.info('computing %d', v)\nprint(v)\nprint('done', file=sys.stderr)\n"),
}
TARGETS = ["printer", "printer_io", "printer_main"]


def _indent(code: str) -> str:
    return "".join("    " + line + "\n" for line in code.splitlines())


def submission(kind: str, use: str) -> dict[str, bytes]:
    setup, emit = STREAM_USES[use]
    head = "import os, sys\n" + setup
    if kind == "printer_main":
        return {"main.py": (head + "v = 2 * int(input())\n" + emit).encode()}
    return {"submission.py": (head + "def double(n):\n    v = 2 * n\n" + _indent(emit) + "    return v\n").encode()}


@pytest.mark.parametrize("use", sorted(STREAM_USES))
@pytest.mark.parametrize("kind", TARGETS)
def test_honest_stream_use_gets_full_marks(attack_grader, kind, use):
    report, reply = attack_grader.pipeline(kind, files=submission(kind, use))
    failing = [(t.name, t.status.value, t.message, t.actual) for t in report.tests if t.status.value != "passed"]
    assert report.outcome is Outcome.passed and report.score == report.max_score, (
        report.outcome, [e.title for e in report.explanations], failing)
    assert reply.correct is True
    assert not leaks(*report_texts(report, reply))


def test_wrong_output_still_fails(attack_grader):
    """The printed answer is really compared: the right value printed wrong loses those points."""
    code = b"import sys\ndef double(n):\n    sys.stdout.buffer.write(b'%d\\n' % (n + n + 1))\n    return 2 * n\n"
    for kind in ("printer", "printer_io"):
        report, _reply = attack_grader.pipeline(kind, files={"submission.py": code})
        assert 0 < report.score < report.max_score, report
