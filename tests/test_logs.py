"""structlog setup: JSON lines (with submission context and redaction),
console output on a terminal, level filtering, and stdlib loggers routed
through the same renderer."""

import io
import json
import logging
import sys
from types import SimpleNamespace

import pytest
import structlog
from pydantic import SecretStr

from xgrader.logs import bind_submission, configure, unconfigure, use_json


class Err:
    """capsys's stderr, read as JSON lines (configure() binds sys.stderr as
    it is during the test call, which is pytest's capture)."""

    def __init__(self, capsys) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def stderr(capsys):
    yield Err(capsys)
    unconfigure()  # process-global: leave no trace for other tests


def lines(buf) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_submission_and_redact(stderr):
    configure(SimpleNamespace(log_format="json", log_level="info"))
    with bind_submission("q1", "42", "hello"):
        structlog.get_logger("t").info("graded", password="hunter2", key=SecretStr("s3"))
    structlog.get_logger("t").info("outside")
    text = stderr.getvalue()
    first, second = lines(io.StringIO(text))
    assert first["submission_id"] == "42" and first["queue"] == "q1" and first["assignment"] == "hello"
    assert first["password"] == "***" and first["key"] == "***" and first["level"] == "info"
    assert "hunter2" not in text and "s3" not in text
    assert "submission_id" not in second  # the context ends with the block


def test_level_filtering(stderr):
    configure(SimpleNamespace(log_format="json", log_level="warning"))
    log = structlog.get_logger("t")
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in lines(stderr)] == ["loud"]


def test_stdlib_loggers_become_json_lines_too(stderr):
    configure(SimpleNamespace(log_format="json", log_level="info"))
    with bind_submission("q1", "7"):
        logging.getLogger("urllib3.connectionpool").warning("Retrying %s", "GET /x")
        logging.getLogger("werkzeug").info("127.0.0.1 - GET /metrics 200")  # below WARNING: dropped
    (line,) = lines(stderr)
    assert line["event"] == "Retrying GET /x" and line["logger"] == "urllib3.connectionpool"
    assert line["submission_id"] == "7" and line["level"] == "warning"


def test_console_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    buf = Tty()
    monkeypatch.setattr(sys, "stderr", buf)
    try:
        assert use_json("auto", buf) is False and use_json("auto", io.StringIO()) is True
        assert use_json("json", buf) is True and use_json("console", io.StringIO()) is False
        configure(SimpleNamespace(log_format="auto", log_level="info"))
        structlog.get_logger("t").info("graded", score=3)
    finally:
        unconfigure()
    text = buf.getvalue()
    assert "graded" in text and "score=3" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.strip().splitlines()[-1])


def test_configure_twice_keeps_one_handler(stderr):
    configure(SimpleNamespace(log_format="json", log_level="info"))
    configure(SimpleNamespace(log_format="json", log_level="info"))
    logging.getLogger("x").error("once")
    assert [line["event"] for line in lines(stderr)] == ["once"]


def test_configured_logging_follows_a_replaced_stderr(monkeypatch):
    """A stream captured at configure() time and closed later (pytest's capture
    between tests) must never be written to: logs go to the current sys.stderr."""
    import io
    import sys

    import structlog

    from xgrader import logs

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.configure(type("S", (), {"log_format": "json", "log_level": "info"})())
    try:
        first.close()
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        structlog.get_logger("t").warning("after_swap", n=1)
        assert '"event": "after_swap"' in second.getvalue()
    finally:
        logs.unconfigure()
