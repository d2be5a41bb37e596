"""Sandbox backends behind one contract (see base.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xgrader.sandbox.base import (  # noqa: F401  (re-exported)
    Backend, Limits, RunningSandbox, SandboxError, SandboxJob, SandboxResult, Verdict, clean_text,
)

if TYPE_CHECKING:
    from xgrader.config import Settings


def make_backend(settings: "Settings", *, unsafe_ok: bool = False) -> Backend:
    """The configured backend. `auto` picks docker when an engine answers,
    else bwrap. `unsafe` needs an explicit opt-in (`--unsafe-no-sandbox`)."""
    kind = settings.sandbox
    if kind == "unsafe":
        if not unsafe_ok:
            raise SandboxError("the unsafe backend runs student code unsandboxed; pass --unsafe-no-sandbox")
        from xgrader.sandbox.unsafe import UnsafeBackend
        return UnsafeBackend(settings)
    if kind in ("auto", "docker"):
        from xgrader.sandbox.docker_backend import DockerBackend
        try:
            backend = DockerBackend(settings)
            backend.check()
            return backend
        except SandboxError:
            if kind == "docker":
                raise
    from xgrader.sandbox.bwrap import BwrapBackend
    return BwrapBackend(settings)
