"""structlog setup: JSON lines in production, console on a TTY; secrets redacted."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterator

import structlog
from pydantic import SecretStr

SECRET_KEYS = frozenset({"password", "api_key", "token", "authorization", "queue_password",
                         "basic_auth_password"})
REDACTED = "***"


def redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    # Last line of defence: a secret passed by mistake is never written out.
    for key, value in list(event.items()):
        if isinstance(value, SecretStr) or key.lower() in SECRET_KEYS:
            event[key] = REDACTED
    return event


def configure(settings: Any) -> None:
    fmt = getattr(settings, "log_format", "auto")
    level = logging.getLevelName(str(getattr(settings, "log_level", "info")).upper())
    if not isinstance(level, int):
        level = logging.INFO
    json_out = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (structlog.processors.JSONRenderer() if json_out
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


@contextlib.contextmanager
def bind_submission(queue: str, submission_id: str, assignment: str = "") -> Iterator[None]:
    """Every log line inside carries queue, submission_id and assignment."""
    with structlog.contextvars.bound_contextvars(
            queue=queue, submission_id=submission_id, assignment=assignment):
        yield
