"""The runner's bytecode: written once by the host with the sandbox's own
interpreter, used by sandboxes (read-only), refreshed when the source changes,
and never needed for correctness (ensure_runner_bytecode in
xgrader/handlers/student.py; sandbox/runner.py imports sandbox/runner_core.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from xgrader.config import DEFAULT_RUNNER_DIR, Settings
from xgrader.handlers.student import StudentRunner, _cache_tag, _fresh, ensure_runner_bytecode
from xgrader.backends import make_backend
from xgrader.backends.base import Limits

PYTHON = Settings().sandbox_python


@pytest.fixture
def runner_dir():
    """A private copy of sandbox/ (the shared tree's __pycache__ is left alone),
    readable by the sandbox user (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="xgrader-runner-"))
    base.chmod(0o755)
    dest = base / "runner"
    shutil.copytree(DEFAULT_RUNNER_DIR, dest, ignore=shutil.ignore_patterns("__pycache__", "image"))
    yield dest
    shutil.rmtree(base, ignore_errors=True)


def pycs(folder: Path) -> list[Path]:
    return sorted((folder / "__pycache__").glob("runner_core.*.pyc"))


def test_written_once_for_the_sandbox_interpreter_then_only_checked(runner_dir):
    assert pycs(runner_dir) == []
    assert ensure_runner_bytecode(runner_dir, PYTHON) is True
    [pyc] = pycs(runner_dir)
    tag = _cache_tag(PYTHON)
    if tag:
        assert pyc.name == f"runner_core.{tag}.pyc"
    assert _fresh(pyc, (runner_dir / "runner_core.py").stat())
    written = pyc.stat().st_mtime_ns
    assert ensure_runner_bytecode(runner_dir, PYTHON) is True
    assert pyc.stat().st_mtime_ns == written  # fresh: not rewritten


def test_a_changed_runner_gets_new_bytecode(runner_dir):
    ensure_runner_bytecode(runner_dir, PYTHON)
    source = runner_dir / "runner_core.py"
    source.write_text(source.read_text() + "\n# changed\n")
    os.utime(source, (1_700_000_000, 1_700_000_000))
    [pyc] = pycs(runner_dir)
    assert not _fresh(pyc, source.stat())
    assert ensure_runner_bytecode(runner_dir, PYTHON) is True
    assert _fresh(pycs(runner_dir)[0], source.stat())


def test_unusable_places_cost_speed_not_correctness(tmp_path, runner_dir):
    assert ensure_runner_bytecode(tmp_path / "missing", PYTHON) is False
    assert ensure_runner_bytecode(runner_dir, str(tmp_path / "no-python3.11")) is False
    assert pycs(runner_dir) == []


@pytest.mark.parametrize("with_bytecode", [True, False])
def test_sandboxes_serve_with_and_without_bytecode(runner_dir, with_bytecode):
    if with_bytecode:
        assert ensure_runner_bytecode(runner_dir, PYTHON)
    backend = make_backend(Settings(sandbox="bwrap", runner_dir=runner_dir))
    code = b"def double(x):\n    return 2 * x\n"
    runner = StudentRunner(backend, {"submission.py": code}, Limits(), module="submission",
                           entry="submission.py", label="bytecode-test")
    try:
        loaded = runner.start(10)
        assert loaded["ok"] and loaded["names"]["double"] == "function"
        reply = runner.request({"op": "eval", "expr": "double(21)"}, 10)
        assert reply["ok"] and reply["value"] == 42
    finally:
        runner.close()
    # The sandbox could read the bytecode but never write next to the runner.
    assert len(pycs(runner_dir)) == (1 if with_bytecode else 0)


def test_sandboxes_run_the_bytecode_not_the_source(runner_dir):
    """Bytecode of a marked variant, recorded for the real source's mtime and
    size: a sandbox that reports the mark ran the bytecode."""
    assert ensure_runner_bytecode(runner_dir, PYTHON)
    [pyc] = pycs(runner_dir)
    source = runner_dir / "runner_core.py"
    st = source.stat()
    variant = source.read_text().replace("        kinds = {}\n", '        kinds = {"from_bytecode": "value"}\n', 1)
    assert "from_bytecode" in variant
    script = (
        "import importlib._bootstrap_external as b, sys\n"
        "code = compile(sys.stdin.read(), sys.argv[1], 'exec')\n"
        "open(sys.argv[2], 'wb').write(b._code_to_timestamp_pyc(code, int(sys.argv[3]), int(sys.argv[4])))\n"
    )
    subprocess.run([PYTHON, "-I", "-S", "-c", script, str(source), str(pyc), str(int(st.st_mtime)), str(st.st_size)],
                   input=variant.encode(), check=True, timeout=30)
    assert _fresh(pyc, source.stat())
    backend = make_backend(Settings(sandbox="bwrap", runner_dir=runner_dir))
    runner = StudentRunner(backend, {"submission.py": b"x = 1\n"}, Limits(), module="submission",
                           entry="submission.py", label="bytecode-test")
    try:
        loaded = runner.start(10)
    finally:
        runner.close()
    assert loaded["ok"] and loaded["names"].get("from_bytecode") == "value"
