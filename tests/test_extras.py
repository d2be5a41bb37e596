"""Optional extras (xgrader/extras.py): a feature whose library is missing
stops with one line naming the extra to install. The wheel test runs the
real thing in a venv without extras; here each import site is checked with
the library hidden (None in sys.modules makes `import` fail as if absent)."""

from __future__ import annotations

import sys

import pytest

from xgrader.cli.main import main
from xgrader.extras import MissingExtra, require


def _hide(monkeypatch, *modules: str) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in modules]:
        monkeypatch.delitem(sys.modules, name)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_require_names_the_extra(monkeypatch):
    _hide(monkeypatch, "redis")
    with pytest.raises(MissingExtra) as caught:
        require("redis", "redis")
    assert str(caught.value) == "the redis hint store needs the 'redis' extra: pip install 'xgrader[redis]'"
    assert isinstance(caught.value, ImportError) and caught.value.name == "redis"


def test_require_does_not_hide_a_broken_library(monkeypatch, tmp_path):
    """An ImportError raised inside an installed library is that library's bug, not a missing extra."""
    (tmp_path / "brokenlib.py").write_text("import no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as caught:
        require("brokenlib", "hints")
    assert not isinstance(caught.value, MissingExtra) and caught.value.name == "no_such_module_xyz"


def test_redis_hint_store_without_redis(monkeypatch, capsys):
    _hide(monkeypatch, "redis")
    assert main(["hints", "--store", "redis://127.0.0.1:1/0", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'xgrader[redis]'" in err[0], err


def test_hints_without_openai(monkeypatch, capsys, tmp_path):
    from xgrader.config import Settings
    from xgrader.extras import MissingExtra

    _hide(monkeypatch, "openai")
    for name in [m for m in sys.modules if m.startswith("xgrader.hints")]:
        monkeypatch.delitem(sys.modules, name)  # imported again, without openai
    # The staff side (audit log, questions, reports) needs no LLM client ...
    assert main(["hints", "--store", f"sqlite:///{tmp_path / 'h.db'}", "list"]) == 0
    # ... building the stage that calls the model does.
    from xgrader.hints import build_stage
    settings = Settings(hints={"enabled": True, "store": f"sqlite:///{tmp_path / 'h.db'}"})
    with pytest.raises(MissingExtra, match=r"AI hints need the 'hints' extra: pip install 'xgrader\[hints\]'"):
        build_stage(settings)


def test_docker_backend_without_the_sdk(monkeypatch):
    from xgrader.backends import SandboxError, make_backend
    from xgrader.config import Settings

    _hide(monkeypatch, "docker")
    with pytest.raises(SandboxError, match=r"pip install 'xgrader\[docker\]'"):
        make_backend(Settings(sandbox="docker"))
