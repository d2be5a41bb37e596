"""The package as users install it: the sdist and wheel built from a clean copy
of the source tree (`python -m build`), installed into a fresh venv without
any extra, and run from a folder outside the checkout with no PYTHONPATH.

The in-sandbox runner and the example assignments must come from the
installed package; the optional features must fail with one line naming
their extra. An editable install keeps using the checkout's folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

import xgrader

REPO = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 600


def _source_copy(dest: Path) -> Path:
    """The files a clean clone would have (tracked and new, not ignored): no
    build/, egg-info or __pycache__ of this checkout can leak into the wheel."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, listed):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    return dest


def _env() -> dict[str, str]:
    """The user's environment without anything pointing at this checkout."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("XGRADER_")}


def _run(argv: list, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env={**_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def _venv(path: Path, *install: str, cwd: Path) -> Path:
    made = _run([sys.executable, "-m", "venv", path], cwd=cwd)
    assert made.returncode == 0, made.stderr
    pip = _run([path / "bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *install],
               cwd=cwd, timeout=BUILD_TIMEOUT_S)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return path


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    # Not under pytest's 0700 tmp: the sandbox binds the installed runner as
    # uid 65534, which must be able to reach it (as in any real install).
    work = Path(tempfile.mkdtemp(prefix="xgrader-wheel-test-", dir="/var/tmp"))
    work.chmod(0o755)
    src = _source_copy(work / "src")
    # sdist first, then the wheel from the unpacked sdist: both must be complete.
    r = _run([sys.executable, "-m", "build", "--outdir", work / "dist", src], cwd=work, timeout=BUILD_TIMEOUT_S)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (work / "dist").glob("xgrader-*.whl")
    yield {"work": work, "src": src, "wheel": wheel}
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(built) -> dict[str, Path]:
    """A fresh venv with the wheel and its core dependencies only, and an
    empty folder outside the checkout to run it from."""
    venv = _venv(built["work"] / "venv", str(built["wheel"]), cwd=built["work"])
    outside = built["work"] / "elsewhere"
    outside.mkdir()
    return {"venv": venv, "bin": venv / "bin", "cwd": outside}


def _where(installed, expr: str) -> str:
    r = _run([installed["bin"] / "python", "-c", f"import xgrader.config as c; print({expr})"], cwd=installed["cwd"])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_pyproject_lists_every_package():
    """pyproject.toml names its packages (two are mapped from top-level folders):
    a new subpackage missing there would be missing from the wheel."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "xgrader").rglob("__init__.py")}
    mapped = set(config["package-dir"])
    assert set(config["packages"]) == on_disk | mapped
    assert {REPO / d for d in config["package-dir"].values()} == {REPO / "sandbox", REPO / "payload_handlers"}


@pytest.mark.slow
def test_wheel_is_self_contained(built):
    import zipfile

    names = zipfile.ZipFile(built["wheel"]).namelist()
    for part in ("runner.py", "runner_core.py", "zygote.py", "PROTOCOL.md", "pytest_side/launch.py",
                 "pytest_side/xgrader_plugin.py", "pytest_side/pytest.ini"):
        assert f"xgrader/_sandbox/{part}" in names, part
    examples = {n.split("/")[2] for n in names if n.startswith("xgrader/_examples/")}
    # Every example assignment, the shared signatures library they use and the course's skills.
    assert examples == {p.name for p in (REPO / "payload_handlers").iterdir() if (p / "assignment.toml").is_file()} \
        | {"signatures", "skills.toml"}
    assert "xgrader/_examples/signatures/common.toml" in names
    assert "xgrader/_examples/word_freq/samples/correct_zipped.zip" in names
    # The grading image definition is a build input, not a runtime file.
    assert not [n for n in names if "/image/" in n or "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.slow
def test_version_and_resources_from_the_venv(installed):
    r = _run([installed["bin"] / "xgrader", "--version"], cwd=installed["cwd"])
    assert r.returncode == 0 and r.stdout.strip() == f"xgrader {xgrader.__version__}", r.stdout + r.stderr
    site = str(installed["venv"])
    runner, handlers = _where(installed, "c.DEFAULT_RUNNER_DIR"), _where(installed, "c.DEFAULT_HANDLERS")
    assert runner.startswith(site) and Path(runner, "runner.py").is_file(), runner
    assert handlers.startswith(site) and Path(handlers, "is_prime", "assignment.toml").is_file(), handlers


@pytest.mark.slow
def test_grade_an_example_from_the_venv(installed):
    samples = Path(_where(installed, "c.DEFAULT_HANDLERS")) / "is_prime" / "samples"
    replies = {}
    for sample in ("correct.py", "wrong_offbyone.py"):
        r = _run([installed["bin"] / "xgrader", "grade", "--sandbox", "bwrap", "--payload", "is_prime",
                  samples / sample], cwd=installed["cwd"])
        assert r.returncode == 0, r.stdout + r.stderr
        replies[sample] = json.loads(r.stdout)
    assert replies["correct.py"]["correct"] is True and replies["correct.py"]["score"] == 10, replies
    assert replies["wrong_offbyone.py"]["correct"] is False, replies


@pytest.mark.slow
def test_demo_from_the_venv(installed):
    r = _run([installed["bin"] / "xgrader", "demo", "--timeout", "240"], cwd=installed["cwd"], timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    done = re.search(r"^(\d+)/(\d+) results delivered$", r.stdout, flags=re.M)
    assert done and done[1] == done[2] and int(done[1]) >= 30, r.stdout[-2000:]


@pytest.mark.slow
def test_core_install_leaves_the_extras_out(installed):
    r = _run([installed["bin"] / "python", "-c",
              "import importlib.util as u\nprint([m for m in ('openai', 'docker', 'redis', 'psycopg', 'pytest')"
              " if u.find_spec(m)])"], cwd=installed["cwd"])
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.mark.slow
def test_missing_extras_fail_with_one_line(installed):
    """Each optional feature, used without its extra, stops with one line that
    names the extra to install (no traceback)."""
    sample = Path(_where(installed, "c.DEFAULT_HANDLERS")) / "is_prime" / "samples" / "correct.py"
    xg = installed["bin"] / "xgrader"
    hints = _run([xg, "run", "--sandbox", "bwrap"], cwd=installed["cwd"], timeout=60,
                 env={"XGRADER_HINTS__ENABLED": "true", "XGRADER_LOG_LEVEL": "warning"})
    docker = _run([xg, "grade", "--sandbox", "docker", "--payload", "is_prime", sample], cwd=installed["cwd"])
    preview = _run([xg, "grade", "--hints", "--payload", "is_prime", sample], cwd=installed["cwd"],
                   env={"XGRADER_HINTS__ENABLED": "true"})
    # The hints' staff side (audit, questions, reports) works without the LLM client.
    audit = _run([xg, "hints", "list"], cwd=installed["cwd"])
    assert audit.returncode == 0 and "ASSIGNMENT" in audit.stdout, audit.stderr
    for r, code, extra in ((hints, 2, "hints"), (docker, 3, "docker"), (preview, 2, "hints")):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == code and len(lines) == 1, r.stdout + r.stderr
        assert f"pip install 'xgrader[{extra}]'" in lines[0], lines


@pytest.mark.slow
def test_editable_install_uses_the_checkout_folders(built):
    """`pip install -e .`: the runner and examples are the checkout's own
    top-level folders (edits take effect without a rebuild)."""
    src = built["src"]
    venv = _venv(built["work"] / "venv-editable", "--no-deps", "-e", str(src), cwd=built["work"])
    r = _run([venv / "bin/python", "-c", "import xgrader.resources as r; print(r.RUNNER_DIR); print(r.EXAMPLES_DIR)"],
             cwd=built["work"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(src / "sandbox"), str(src / "payload_handlers")]
