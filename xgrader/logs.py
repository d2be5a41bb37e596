"""structlog setup: JSON lines in production, console on a TTY; secrets redacted.

`log_format`: auto (JSON unless stderr is a terminal) | json | console.
Standard-library loggers (werkzeug, urllib3, tenacity...) are routed through
the same processors, so a production log is JSON lines only.

What never reaches the log at info level: student code, program output and
secrets. Call sites log ids, names, outcomes and sizes; :func:`redact_secrets`
is the last line of defence for secret-looking keys and SecretStr values.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import structlog
from pydantic import SecretStr

if TYPE_CHECKING:
    from xgrader.config import Settings

SECRET_KEYS = frozenset({"password", "api_key", "token", "authorization", "queue_password",
                         "basic_auth_password", "secret", "cookie", "session_key"})
REDACTED = "***"
_HANDLER_MARK = "_xgrader_handler"


def redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    # Last line of defence: a secret passed by mistake is never written out.
    for key, value in list(event.items()):
        if isinstance(value, SecretStr) or key.lower() in SECRET_KEYS:
            event[key] = REDACTED
    return event


def use_json(fmt: str, stream: Any = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


class _Stderr:
    """sys.stderr looked up at every write: a stream replaced after configure()
    (a test's capture, a redirected child) is used, a closed old one never is."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(settings: Settings) -> None:
    """Process-wide logging setup (the CLI calls it once per process)."""
    fmt = getattr(settings, "log_format", "auto")
    level = logging.getLevelName(str(getattr(settings, "log_level", "info")).upper())
    if not isinstance(level, int):
        level = logging.INFO
    renderer: Any = (structlog.processors.JSONRenderer() if use_json(fmt)
                     else structlog.dev.ConsoleRenderer(colors=False))
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(shared, renderer, level)


class _Notice:
    """The quiet renderer of the course-staff commands: a warning or an error
    as one plain line (`xgrader: warning: docker_image_stale (fix=...)`),
    each event once per run (stdlib records: every one, a formatter cannot
    drop); nothing below warning reaches it."""

    def __init__(self, once: bool = True, covered: frozenset[str] = frozenset()) -> None:
        self.once = once
        self.seen: set[tuple[str, str]] = set()
        self.covered = covered

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> str:
        level = str(event.pop("level", "warning"))
        name = str(event.pop("event", ""))
        for key in ("timestamp", "logger", "_record", "_from_structlog"):
            event.pop(key, None)
        if name in self.covered:
            raise structlog.DropEvent
        if self.once:
            if (level, name) in self.seen:
                raise structlog.DropEvent
            self.seen.add((level, name))
        details = " ".join(f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}"
                           for k, v in event.items() if v not in (None, ""))
        return f"xgrader: {level}: {name}" + (f" ({details})" if details else "")


def configure_cli(verbose: bool, covered: Iterable[str] = ()) -> None:
    """Logging for `xgrader grade`, `batch` and `check`, whose output is their
    own: with -v, every grading step as console log lines; without, only
    warnings and errors, each once, as a plain `xgrader: warning: ...` line
    (a clean run prints nothing but the command's output), except the
    `covered` events, which the command reports itself."""
    if verbose:
        configure(SimpleNamespace(log_format="console", log_level="debug"))
        return
    configure(SimpleNamespace(log_format="console", log_level="warning"))
    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, redact_secrets]
    structlog.configure(processors=[*shared, _Notice(covered=frozenset(covered))])
    _route_stdlib(shared, _Notice(once=False), logging.WARNING)


def _route_stdlib(shared: list, renderer: Any, level: int) -> None:
    """Standard-library records get the same context, redaction and format."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):  # configure() again: replace ours only
            root.removeHandler(handler)
    handler = logging.StreamHandler(_Stderr())
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    # Libraries are chatty at info (one line per HTTP request): warnings and up.
    root.setLevel(max(level, logging.WARNING))


def unconfigure() -> None:
    """Undo :func:`configure` (tests)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    structlog.reset_defaults()


@contextlib.contextmanager
def bind_submission(queue: str, submission_id: str, assignment: str = "") -> Iterator[None]:
    """Every log line inside carries queue, submission_id and assignment."""
    with structlog.contextvars.bound_contextvars(
            queue=queue, submission_id=submission_id, assignment=assignment):
        yield


def clip(text: object, limit: int = 300) -> str:
    """`text` in at most `limit` characters for a log line or an error
    detail, cut at a word boundary and marked with "..." when shortened
    (an error cut mid-word reads as a different error)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 3)]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "..."
