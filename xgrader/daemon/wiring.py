"""Builds the daemon's parts from Settings: logging, the metrics hooks, the
queue client, and the optional hints stage (imported lazily: missing, it is
logged and skipped, never fatal)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import structlog

from xgrader.hooks import HookChain, Hooks

if TYPE_CHECKING:
    from xgrader.config import Settings

log = structlog.get_logger(__name__)


def _optional(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and module.startswith(exc.name):  # the module itself is absent
            return None
        raise


def configure_logging(settings: Settings) -> None:
    from xgrader.logs import configure

    configure(settings)


def build_hooks(settings: Settings) -> Hooks:
    """The metrics hooks (which serve /metrics, /healthz and /readyz when
    metrics_port is set) and the attempt ledger's recorder, in a chain other
    hooks can join."""
    from xgrader.metrics import build_hooks as metrics_hooks

    recorder = _ledger_hooks(settings)
    chain = HookChain(metrics_hooks(settings), *([recorder] if recorder is not None else []))
    if recorder is not None:
        recorder.report_to = chain   # ledger outcomes reach the metrics (replayed from children)
    return chain


def _ledger_hooks(settings: Settings) -> Hooks | None:
    """The attempt ledger (Hooks.on_attempt), its schema ready before any fork."""
    ledger = getattr(settings, "ledger", None)
    if ledger is None or not ledger.enabled:
        return None
    from xgrader.ledger.recorder import LedgerHooks

    recorder = LedgerHooks(ledger)
    recorder.prepare()
    return recorder


def build_client(settings: Settings, hooks: Hooks) -> Any:
    from xgrader.client import XQueueClient

    return XQueueClient(settings, hooks=hooks)


def build_hints(settings: Settings, hooks: Hooks) -> Any | None:
    if not settings.hints.enabled:
        return None
    hints = _optional("xgrader.hints")
    factory = getattr(hints, "build_stage", None) if hints is not None else None
    if not callable(factory):
        log.warning("hints_unavailable")
        return None
    return factory(settings, hooks)
