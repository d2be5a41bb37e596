"""Builds the daemon's parts from Settings. Optional parts (metrics, hints,
structured-log setup) are imported lazily: a missing or broken one is
logged and skipped, never fatal."""

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
    logs = _optional("xgrader.logs")
    if logs is not None and hasattr(logs, "configure"):
        logs.configure(settings)


def build_hooks(settings: Settings) -> Hooks:
    """Metrics (and whatever else implements Hooks) chained together."""
    hooks: list[Hooks] = []
    metrics = _optional("xgrader.metrics")
    if metrics is not None:
        for name in ("build_hooks", "from_settings", "start"):
            factory = getattr(metrics, name, None)
            if callable(factory):
                made = factory(settings)
                if isinstance(made, Hooks):
                    hooks.append(made)
                break
        else:
            cls = getattr(metrics, "MetricsHooks", None)
            if cls is not None:
                hooks.append(cls())
    return HookChain(*hooks) if hooks else HookChain(Hooks())


def build_client(settings: Settings, hooks: Hooks) -> Any:
    from xgrader.client import XQueueClient

    try:
        return XQueueClient(settings, hooks=hooks)
    except TypeError:
        return XQueueClient(settings)


def build_hints(settings: Settings, hooks: Hooks) -> Any | None:
    if not settings.hints.enabled:
        return None
    hints = _optional("xgrader.hints")
    factory = getattr(hints, "build_stage", None) if hints is not None else None
    if not callable(factory):
        log.warning("hints_unavailable")
        return None
    return factory(settings, hooks)
