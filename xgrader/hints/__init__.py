"""Optional AI hints over any OpenAI-compatible endpoint (docs/hints.md).

The daemon calls :func:`build_stage` when `XGRADER_HINTS__ENABLED` is set;
the pipeline calls `stage.apply(request, report)` for submissions without
full marks. The hint never changes the score or `correct`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from xgrader.extras import MissingExtra
from xgrader.hints.models import HintOutcome, HintType, PROMPT_VERSION
from xgrader.hints.store import HintStore, RedisStore, SQLiteStore, check_store_url, open_store
from xgrader.hooks import Hooks

if TYPE_CHECKING:
    from xgrader.config import Settings
    from xgrader.hints.stage import HintStage

log = structlog.get_logger(__name__)

__all__ = ["HintStage", "HintStore", "SQLiteStore", "RedisStore", "open_store", "build_stage",
           "HintType", "HintOutcome", "PROMPT_VERSION"]


def __getattr__(name: str) -> Any:
    # The stage needs the 'hints' extra (openai); the staff side (records,
    # pages, reports) does not, so it is imported only when asked for.
    if name == "HintStage":
        from xgrader.hints.stage import HintStage
        return HintStage
    raise AttributeError(name)


def build_stage(settings: Settings, hooks: Hooks | None = None) -> HintStage | None:
    """The stage the daemon wires in, or None (logged) when the hint settings
    are unusable: hints are optional, the daemon grades without them. The
    store is opened per process on first use (the daemon forks per job)."""
    try:
        check_store_url(settings.hints.store)
        from xgrader.hints.stage import HintStage
        return HintStage(settings, hooks)
    except MissingExtra:  # not a setting to fix but an install: the caller stops with one line
        raise
    except Exception as exc:
        log.error("hints_unavailable", error=str(exc)[:300])
        return None
