"""Defaults decided in config.py: the warm pool (on for the daemon's bwrap
backend, off for one-off commands and other backends, an explicit value
everywhere)."""

from __future__ import annotations

import pytest

from xgrader.backends import make_backend
from xgrader.backends.bwrap import BwrapBackend
from xgrader.backends.warm import WarmPool
from xgrader.config import Settings


@pytest.mark.parametrize("set_to, backend, daemon, want", [
    (None, "bwrap", True, 1), (None, "bwrap", False, 0), (None, "docker", True, 0), (None, "docker", False, 0),
    (0, "bwrap", True, 0), (3, "bwrap", False, 3), (2, "docker", True, 2),
])
def test_warm_pool_for(set_to, backend, daemon, want):
    settings = Settings() if set_to is None else Settings(warm_pool=set_to)
    assert settings.warm_pool_for(backend, daemon=daemon) == want


def test_warm_pool_from_the_environment(monkeypatch):
    monkeypatch.setenv("XGRADER_WARM_POOL", "0")
    assert Settings.load().warm_pool_for("bwrap", daemon=True) == 0


def test_make_backend_applies_the_default():
    daemon = make_backend(Settings(sandbox="bwrap"), daemon=True)
    one_off = make_backend(Settings(sandbox="bwrap"))
    off = make_backend(Settings(sandbox="bwrap", warm_pool=0), daemon=True)
    try:
        if not daemon.inner.cgroups.usable if isinstance(daemon, WarmPool) else not daemon.cgroups.usable:
            pytest.fail("this host's cgroups are not usable by the bwrap backend")
        assert isinstance(daemon, WarmPool) and daemon.size == 1
        assert type(one_off) is BwrapBackend and type(off) is BwrapBackend
    finally:
        for b in (daemon, one_off, off):
            b.close()
