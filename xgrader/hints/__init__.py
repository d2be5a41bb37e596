"""Optional AI hints over any OpenAI-compatible endpoint (docs/hints.md).

The daemon calls :func:`build_stage` when `XGRADER_HINTS__ENABLED` is set;
the pipeline calls `stage.apply(request, report)` for submissions without
full marks. The hint never changes the score or `correct`.
"""

from __future__ import annotations

from typing import Any

from xgrader.hints.models import HintOutcome, HintType, PROMPT_VERSION
from xgrader.hints.stage import HintStage
from xgrader.hints.store import HintStore, RedisStore, SQLiteStore, open_store
from xgrader.hooks import Hooks

__all__ = ["HintStage", "HintStore", "SQLiteStore", "RedisStore", "open_store", "build_stage",
           "HintType", "HintOutcome", "PROMPT_VERSION"]


def build_stage(settings: Any, hooks: Hooks | None = None) -> HintStage:
    """The stage the daemon wires in (opens the store now: a bad store URL
    fails at start, where the wiring logs it)."""
    return HintStage(settings, hooks)
