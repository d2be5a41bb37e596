"""Sandbox backends behind one contract (see base.py)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import structlog

from xgrader.backends.base import (  # noqa: F401  (re-exported)
    Backend, Limits, RunningSandbox, SandboxError, SandboxJob, SandboxResult, Verdict, clean_text,
)

if TYPE_CHECKING:
    from xgrader.config import Settings

_log = structlog.get_logger(__name__)


def make_backend(settings: "Settings", *, unsafe_ok: bool = False, daemon: bool = False) -> Backend:
    """The configured backend, checked: raises SandboxError, with what to
    install or enable, when it cannot run here. `auto` picks docker when an
    engine answers and has the grading image, else bwrap. `unsafe` needs an
    explicit opt-in (`--unsafe-no-sandbox`). A backend comes behind a
    WarmPool (xgrader/backends/warm.py) of `settings.warm_pool_for(kind,
    daemon=...)` sandboxes when that is > 0 (docker: and per-job cgroup
    parents work)."""
    kind = settings.sandbox
    if kind == "unsafe":
        if not unsafe_ok:
            raise SandboxError("the unsafe backend runs student code unsandboxed; pass --unsafe-no-sandbox")
        from xgrader.backends.unsafe import UnsafeBackend
        return UnsafeBackend(settings)
    docker_reason = None
    if kind in ("auto", "docker"):
        try:
            from xgrader.backends.docker_backend import DockerBackend
            backend = DockerBackend(settings)
            backend.check()
            warm = settings.warm_pool_for("docker", daemon=daemon)
            if warm > 0 and backend.warmable:
                from xgrader.backends.warm import WarmPool
                return WarmPool(backend, warm, settings)
            return backend
        except Exception as exc:  # noqa: BLE001  (ImportError, DockerException, no engine, no image)
            if kind == "docker":
                if isinstance(exc, SandboxError):
                    raise
                raise SandboxError(f"docker backend unusable: {exc}") from exc
            docker_reason = str(exc)[:300]
            _log.info("sandbox_auto_fallback", backend="bwrap", reason=docker_reason)
    bwrap = _bwrap_backend(settings)
    if isinstance(bwrap, str):
        if docker_reason is not None:
            raise SandboxError(f"no sandbox can run here. bwrap: {bwrap}. docker: {docker_reason}")
        raise SandboxError(bwrap)
    warm = settings.warm_pool_for("bwrap", daemon=daemon)
    if warm > 0:
        from xgrader.backends.warm import WarmPool
        return WarmPool(bwrap, warm, settings)
    return bwrap


def _bwrap_backend(settings: "Settings") -> "Backend | str":
    """A checked bwrap backend, or why there can be none."""
    if sys.platform != "linux":
        from xgrader.backends.bwrap import NEEDS_LINUX
        return NEEDS_LINUX
    from xgrader.backends.bwrap import BwrapBackend
    bwrap = BwrapBackend(settings)
    try:
        bwrap.check()
    except SandboxError as exc:
        bwrap.close()
        return str(exc)
    bwrap.announce()
    return bwrap
