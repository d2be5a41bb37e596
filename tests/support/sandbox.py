"""Sandbox backend fixture: `backend` parametrised over backend names.

Other backends add a name to BACKEND_PARAMS (docker's marked pytest.mark.docker)."""

from __future__ import annotations

import pytest

from xgrader.config import Settings
from xgrader.sandbox import make_backend

BACKEND_PARAMS = [
    pytest.param("bwrap", id="bwrap"),
    pytest.param("unsafe", id="unsafe"),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    settings = Settings(sandbox=request.param)
    b = make_backend(settings, unsafe_ok=request.param == "unsafe")
    yield b
    b.close()
