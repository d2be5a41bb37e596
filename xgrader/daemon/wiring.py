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
    metrics_port is set), in a chain other hooks can join."""
    from xgrader.metrics import build_hooks as metrics_hooks

    return HookChain(metrics_hooks(settings))


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
