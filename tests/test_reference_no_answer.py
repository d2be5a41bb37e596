"""A reference solution that gives no answer in time is the host's failure
(a loaded machine: the compose smoke saw it with four jobs on two cores), not
the assignment's: it is an infrastructure error, retried by the daemon and
never cached, so a student's submission is not posted with 0 points against
it. A reference that raises stays an assignment error (test_handlers_io)."""

from __future__ import annotations

import pytest

from xgrader.errors import AssignmentError, InfraError


def test_io_reference_without_an_answer_in_time_is_infrastructure(make_kit):
    kit = make_kit()
    kit.add("slow_ref", {
        "assignment.toml": 'title = "s"\nkind = "io"\ntest_timeout_s = 0.5\n',
        "tests/cases.toml": '[[case]]\nexpr = "f(1)"\n',
        "solution/submission.py": "def f(x):\n    while True:\n        pass\n",
    })
    with pytest.raises(InfraError, match="reference solution failed.*timeout.*retried") as info:
        kit.grade("slow_ref", "def f(x): return 1\n")
    assert not isinstance(info.value, AssignmentError)


def test_pytest_reference_that_never_loads_is_infrastructure(make_kit):
    kit = make_kit()
    kit.add("slow_load", {
        "assignment.toml": 'title = "s"\nkind = "pytest"\ntest_timeout_s = 0.5\n',
        "tests/test_f.py": "from submission import f\n\ndef test_f():\n    assert f() == 1\n",
        "solution/submission.py": "import time\ntime.sleep(120)\n\ndef f():\n    return 1\n",
    })
    with pytest.raises(InfraError, match="does not load.*retried"):
        kit.grade("slow_load", "def f():\n    return 1\n")
