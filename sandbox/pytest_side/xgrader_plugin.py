"""pytest plugin of the test sandbox: reports the collected tests, then each
test's outcome, to the host over the channel. The host trusts these reports
because no student code runs in this process; a test that never reports is
counted as failed there."""

import os

import pytest

from xgrader_proxy import MissingName, StudentCrash, StudentTimeout

CAP = 2000
HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_args(dirs, rootdir):
    """pytest's command line in the test sandbox (launch.py, and the
    sessions xgrader_template.py collects once per assignment version)."""
    return [
        *dirs, "-q", "-p", "no:cacheprovider", "-p", "no:stepwise",
        # faulthandler keeps a copy of stderr open from configuration on:
        # nothing here reads what it would dump.
        "-p", "no:faulthandler",
        "-c", os.path.join(HERE, "pytest.ini"), "--rootdir", rootdir,
        "--tb=short", "-o", "console_output_style=classic",
        # What student code printed is echoed into pytest's capture (capsys
        # sees it); failure reports need not repeat it on this box's stdout.
        "--show-capture=no",
    ]


def _exception_only(excinfo, style=None):
    """A test failure's long representation: `Type: message` only."""
    return excinfo.exconly()


def _saferepr(value):
    try:
        from _pytest._io.saferepr import saferepr
        return saferepr(value, maxsize=CAP)
    except Exception:
        return "<%s>" % type(value).__name__


class Reporter:
    def __init__(self, session, channel):
        self.session = session
        self.channel = channel
        self.phases = {}
        self.excinfo = None

    @pytest.fixture
    def student_output(self):
        """What the student's code printed during this test: `.last` (the
        last call's Printed(out, err)) and `.readouterr()` (everything since
        the test started or the previous readouterr())."""
        from xgrader_proxy import StudentOutput
        return StudentOutput(self.session)

    def pytest_collection_modifyitems(self, items):
        # A failed test's report is built from the exception itself (result()
        # below); pytest's rendering of its traceback, which re-parses the
        # test file's source for every failure (~2 ms each), would only be
        # printed to this box's stdout, which nobody reads.
        for item in items:
            if type(item) is pytest.Function:  # not unittest's or doctest's items
                item.repr_failure = _exception_only

    def pytest_collection_finish(self, session):
        if self.channel is not None:  # None while xgrader_template collects: its jobs report
            self.collected(session)

    def collected(self, session):
        self.channel.send({"op": "collected", "tests": [item.nodeid for item in session.items]})

    def pytest_runtest_logstart(self, nodeid, location):
        from xgrader_proxy import TestState
        self.session.state = TestState(nodeid)
        self.phases = {}
        self.excinfo = None
        if self.session.peer is None:  # the host relays this test's calls: it times them per test
            self.channel.send({"op": "start", "nodeid": nodeid})

    def pytest_assertrepr_compare(self, config, op, left, right):
        # Remember the two sides of the failing comparison; keep pytest's own text.
        self.session.state.compare = (op, _saferepr(left), _saferepr(right))
        return None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if call.excinfo is not None and report.failed and self.excinfo is None:
            self.excinfo = call.excinfo

    def pytest_runtest_logreport(self, report):
        self.phases[report.when] = report

    def pytest_runtest_logfinish(self, nodeid, location):
        self.channel.send(self.result(nodeid))

    def result(self, nodeid):
        setup, call, teardown = (self.phases.get(w) for w in ("setup", "call", "teardown"))
        state = self.session.state
        msg = {"op": "result", "nodeid": nodeid, "input": state.input,
               "output": "".join(state.output)[:CAP * 5]}
        if state.trace is not None:  # calls made over the peer channel: what the host would have noted
            msg["trace"] = state.trace.message()
        if (setup and setup.skipped) or (call and call.skipped):
            msg["outcome"] = "skipped"
            return msg
        failed = any(r is not None and r.failed for r in (setup, call, teardown))
        if not failed and call is not None and call.passed:
            msg["outcome"] = "passed"
            return msg
        if state.missing:
            # The test used a name the submission lacks: say that, whatever it led to.
            msg.update(outcome="error", missing=True,
                       message=("your code does not define %s" % state.missing[0])[:CAP])
            return msg
        exc = self.excinfo.value if self.excinfo is not None else None
        etype = type(exc).__name__ if exc is not None else None
        if isinstance(exc, StudentTimeout):
            msg["outcome"] = "timeout"
            if exc.out_of_time:
                msg["out_of_time"] = True
        elif isinstance(exc, StudentCrash):
            msg["outcome"] = "error"
            msg["message"] = str(exc)[:CAP]
        elif isinstance(exc, MissingName):
            msg["outcome"] = "error"
            msg["missing"] = True
            msg["message"] = str(exc)[:CAP]
        elif exc is not None and getattr(exc, "_xgrader_remote", False):
            msg["outcome"] = "error"
            msg["exception_type"] = etype
            msg["message"] = ("%s: %s" % (etype, exc))[:CAP]
            msg["traceback"] = str(getattr(exc, "_xgrader_traceback", ""))[-CAP:]
        else:
            msg["outcome"] = "failed"
            if exc is not None:
                text = str(exc).strip()
                msg["message"] = (text.splitlines()[0] if text else etype)[:CAP]
                if not isinstance(exc, AssertionError):
                    msg["exception_type"] = etype
        if state.compare is not None:
            op, left, right = state.compare
            msg["actual"], msg["expected"] = left, right
        return msg
