import json
from types import SimpleNamespace

import structlog
from pydantic import SecretStr

from xgrader.logs import bind_submission, configure


def test_json_lines_carry_submission_and_redact(capsys):
    configure(SimpleNamespace(log_format="json", log_level="info"))
    try:
        with bind_submission("q1", "42", "hello"):
            structlog.get_logger("t").info("graded", password="hunter2", key=SecretStr("s3"))
    finally:
        structlog.reset_defaults()  # configure() is process-global; leave no trace for other tests
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["submission_id"] == "42" and line["queue"] == "q1" and line["assignment"] == "hello"
    assert line["password"] == "***" and line["key"] == "***"
    assert "hunter2" not in json.dumps(line)
