"""xgrader as a course author without root: `grade`, `check`, `batch`,
`mutants`, `coverage` and `demo` run as an unprivileged user (tests/support/unprivileged.py) on bwrap
(fork servers, cold starts, the warm pool; rlimits, or a delegated cgroup)
and on the author's rootless podman, with the results root gets, one line
about the limits, and nothing left running. Where no sandbox can run, one
clear error says what to install or enable."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.sandbox import REPO

pytestmark = pytest.mark.slow

SAMPLES = "payload_handlers/sum_digits/samples"
CSV_COLUMNS = ("file", "score", "max", "correct", "outcome")


def gradebook(path: Path) -> list[tuple]:
    with open(path, newline="") as fh:
        return sorted(tuple(row[c] for c in CSV_COLUMNS) for row in csv.DictReader(fh))


@pytest.fixture(scope="module")
def root_gradebook(tmp_path_factory) -> list[tuple]:
    """What root gets for the samples (the same code, the production path)."""
    out = tmp_path_factory.mktemp("root-batch") / "gb.csv"
    r = subprocess.run(["python3", "-m", "xgrader", "batch", "--payload", "sum_digits", "--sandbox", "bwrap",
                        "--out", str(out), str(REPO / SAMPLES)], capture_output=True, text=True, timeout=300,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    return gradebook(out)


def log_lines(stderr: str) -> list[str]:
    """The log lines a command printed (`xgrader: warning: EVENT (...)`, or
    the console format's `TIMESTAMP [level] EVENT ...`)."""
    return [line for line in stderr.splitlines()
            if line.startswith(("xgrader: warning:", "xgrader: error:")) or (line[:4].isdigit() and "[" in line)]


def run_as_author(author, sandbox: str, *args: str, **env: str):
    before = author.processes()
    r = author.xgrader(*args, "--sandbox", sandbox, **env)
    return r, author.new_processes(before)


@pytest.mark.parametrize("env", [{}, {"XGRADER_SANDBOX_FORK_SERVER": "0"}, {"XGRADER_WARM_POOL": "1"}],
                         ids=["fork_servers", "cold", "warm_pool"])
def test_grade_check_batch_as_an_author_on_bwrap(author, root_gradebook, env):
    code = author.code
    r, left = run_as_author(author, "bwrap", "grade", "--handlers", f"{code}/payload_handlers", "--payload",
                            '{"grader": "sum_digits"}', f"{code}/{SAMPLES}/wrong_offbyone.py", **env)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["score"] == 1 and reply["correct"] is False, reply
    # The limits in force, said once; no warning per job.
    lines = log_lines(r.stderr)
    assert len(lines) == 1 and "sandbox_limits" in lines[0] and "jobs as 65534 in a user namespace" in lines[0], r.stderr
    assert "no cgroup per job" in lines[0] and "not enforced: a CPU quota" in lines[0], lines
    assert left == {}, left

    r, left = run_as_author(author, "bwrap", "check", "--handlers", f"{code}/payload_handlers", "sum_digits", **env)
    assert r.returncode == 0 and "PASS  sum_digits" in r.stdout, (r.stdout, r.stderr)
    assert left == {}, left

    out = author.tmp / f"gb-{len(env)}-{'-'.join(env)}.csv"
    r, left = run_as_author(author, "bwrap", "batch", "--payload", "sum_digits", "--out", str(out),
                            f"{code}/{SAMPLES}", **env)
    assert r.returncode == 0, r.stderr
    assert gradebook(out) == root_gradebook
    assert left == {}, left


def test_check_all_example_assignments_as_an_author(author):
    n = sum(1 for p in (author.code / "payload_handlers").iterdir() if (p / "assignment.toml").is_file())
    r, left = run_as_author(author, "bwrap", "check", "--all", "--handlers", f"{author.code}/payload_handlers")
    assert r.returncode == 0 and f"{n}/{n} assignments pass" in r.stdout, (r.stdout, r.stderr)
    assert left == {}, left


def test_mutants_and_coverage_as_an_author(author):
    """The author's loop as the author: mutation testing of the hidden tests
    and the feedback coverage report, on bwrap, with root's results."""
    code = author.code
    r, left = run_as_author(author, "bwrap", "mutants", "sum_digits", "--handlers", f"{code}/payload_handlers",
                            "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    statuses = [m["status"] for m in run["results"]]
    assert len(statuses) >= 10 and statuses.count("killed") >= 8 and "error" not in statuses, statuses
    assert run["score"] == 1.0, run["score"]     # the example's tests kill every non-equivalent mutant
    assert left == {}, left

    out = author.tmp / "coverage.json"
    html = author.tmp / "coverage.html"
    r, left = run_as_author(author, "bwrap", "coverage", "--payload", "sum_digits", "--json", str(out),
                            "--html", str(html), f"{code}/{SAMPLES}")
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["submissions"] == summary["graded"] == 6 and summary["not_graded"] == [], summary
    [whole] = summary["criteria"]
    assert whole["lost_points"] == whole["with_specific"] == 5 and whole["nothing_specific"] == [], whole
    assert "<html" in html.read_text().lower()
    assert left == {}, left


def test_grade_check_batch_as_an_author_on_rootless_podman(author, author_podman, root_gradebook):
    """The author's own rootless podman, found where podman puts its socket
    (no DOCKER_HOST): the job folder's bind mount, the channel socket in it
    and the copied files work with the container's uid mapped to a
    subordinate id."""
    code = author.code
    r, left = run_as_author(author, "docker", "grade", "--handlers", f"{code}/payload_handlers", "--payload",
                            "sum_digits", f"{code}/{SAMPLES}/correct.py")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["score"] == 11
    lines = log_lines(r.stderr)
    assert len(lines) == 1 and "sandbox_limits" in lines[0] and author_podman in lines[0], r.stderr
    # This host is cgroup v1: a rootless engine enforces no limit, rlimits do.
    assert "rootless without cgroup limits" in lines[0] and "RLIMIT_DATA" in lines[0], lines
    assert left == {}, left

    r, left = run_as_author(author, "docker", "check", "--handlers", f"{code}/payload_handlers", "word_freq")
    assert r.returncode == 0 and "PASS  word_freq" in r.stdout, (r.stdout, r.stderr)

    out = author.tmp / "gb-podman.csv"
    r, left = run_as_author(author, "docker", "batch", "--payload", "sum_digits", "--out", str(out),
                            f"{code}/{SAMPLES}")
    assert r.returncode == 0, r.stderr
    assert gradebook(out) == root_gradebook
    assert left == {}, left
    containers = subprocess.run(author.command("podman", "ps", "-aq", "--filter", "label=xgrader.owner"),
                                capture_output=True, text=True, check=True)
    assert containers.stdout.strip() == ""
    assert not list(author.tmp.glob("xgrader-docker-*"))


def without_user_namespaces(author, *argv: str, hide_bwrap: bool = False) -> list[str]:
    """argv as the author inside a user namespace that may not create another
    one (what a distribution with unprivileged user namespaces disabled
    gives); `hide_bwrap`: and no bubblewrap installed."""
    hide = ["--ro-bind", "/dev/null", shutil.which("bwrap")] if hide_bwrap else []
    return author.command("bwrap", "--dev-bind", "/", "/", *hide, "--unshare-user", "--disable-userns",
                          "--", *argv)


def test_auto_picks_the_container_engine_where_bwrap_cannot_run(author, author_podman):
    cmd = without_user_namespaces(author, author.python, "-m", "xgrader", "grade", "--handlers",
                                  f"{author.code}/payload_handlers", "--payload", "sum_digits",
                                  f"{author.code}/{SAMPLES}/correct.py")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=author.tmp)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["score"] == 11
    assert "docker backend on podman" in r.stderr, r.stderr


@pytest.mark.parametrize("missing", ["user_namespaces", "bubblewrap"])
def test_no_sandbox_is_one_clear_error(author, missing):
    """No engine answers (DOCKER_HOST points nowhere) and bwrap cannot run:
    one line naming what to install or enable, exit 3, no traceback."""
    cmd = without_user_namespaces(author, "env", "DOCKER_HOST=unix:///nonexistent/docker.sock", author.python,
                                  "-m", "xgrader", "grade", "--handlers", f"{author.code}/payload_handlers",
                                  "--payload", "sum_digits", f"{author.code}/{SAMPLES}/correct.py",
                                  hide_bwrap=missing == "bubblewrap")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=author.tmp)
    assert r.returncode == 3 and r.stdout == "", (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("xgrader:")]
    assert len(errors) == 1, r.stderr
    assert "no sandbox can run here" in errors[0] and "docker:" in errors[0]
    if missing == "bubblewrap":
        assert "bubblewrap is not installed" in errors[0] and "apt install bubblewrap" in errors[0], errors
    else:
        assert "unprivileged user namespaces" in errors[0] and "kernel.unprivileged_userns_clone" in errors[0], errors


@pytest.fixture
def delegated_cgroup(author):
    """A cgroup subtree of each v1 controller handed to the author, as an
    administrator (or systemd's Delegate=yes) does: the author's command
    starts in it and may create job cgroups below it."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        pytest.fail("this test delegates cgroup v1 hierarchies; the host is cgroup v2")
    name = f"xgrader-author-{os.getpid()}"
    dirs = [root / c / name for c in ("memory", "pids", "cpu", "cpuacct")]
    for d in dirs:
        d.mkdir()
        for path in [d, *d.iterdir()]:
            os.chown(path, author.uid, author.gid)

    def enter() -> None:  # in the child, before it drops to the author
        for d in dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    yield dirs, enter
    for d in dirs:
        for sub in sorted(d.glob("**/"), key=lambda p: -len(p.parts)):
            if sub != d:
                sub.rmdir()
        d.rmdir()


def test_a_delegated_cgroup_gives_the_author_cgroup_limits(author, delegated_cgroup):
    dirs, enter = delegated_cgroup
    code = author.code
    r = author.xgrader("grade", "--sandbox", "bwrap", "--handlers", f"{code}/payload_handlers", "--payload",
                       "sum_digits", f"{code}/{SAMPLES}/wrong_negative_crash.py", preexec_fn=enter)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["score"] == 9
    assert log_lines(r.stderr) == [], r.stderr  # every limit holds: nothing to warn about
    # A job split over processes is held by the job's cgroup (the OOM killer).
    probe = (
        "import json\n"
        "from xgrader.backends import make_backend\n"
        "from xgrader.backends.base import Limits, SandboxJob\n"
        "from xgrader.config import Settings\n"
        "b = make_backend(Settings(sandbox='bwrap'))\n"
        "src = ('import os, time\\nfor _ in range(6):\\n    if os.fork() == 0:\\n'\n"
        "       '        x = b\"x\" * (40 * 2**20)\\n        time.sleep(30)\\ntime.sleep(30)\\n')\n"
        "r = b.run(SandboxJob(argv=['python3', '-I', '-S', 'x.py'], files={'x.py': src.encode()},\n"
        "                     limits=Limits(wall_s=15, memory_mb=128)))  # the OOM ends it\n"
        "print(json.dumps({'usable': b.cgroups.usable, 'verdict': r.verdict.value, 'peak': r.peak_memory_mb,\n"
        "                  'summary': b.limits_summary()}))\n"
        "b.close()\n"
    )
    r = subprocess.run(author.command(author.python, "-c", probe), capture_output=True, text=True, timeout=120,
                       cwd=author.tmp, preexec_fn=enter)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])  # after the backend's own log lines
    assert out["usable"] and out["verdict"] == "memory" and out["peak"] <= 129, out
    assert "a cgroup (v1) per job: memory+swap, pids, CPU quota 1 core" in out["summary"], out
    assert all(not list(d.glob("xgrader-bw-*")) for d in dirs), [list(d.iterdir()) for d in dirs]


def test_demo_as_an_author_needs_no_apt_get(author):
    """scripts/demo as a non-root user: no setup (apt-get), the demo's queue,
    daemon and sandboxes as the author; every sample gets its one result."""
    shutil.copytree(REPO / "scripts", author.code / "scripts", dirs_exist_ok=True)
    before = author.processes()
    env = {"PATH": f"{Path(author.python).parent}:/usr/local/bin:/usr/bin:/bin"}
    r = subprocess.run(author.command("bash", f"{author.code}/scripts/demo", "--timeout", "240", **env),
                       capture_output=True, text=True, timeout=400, cwd=author.tmp)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "setup:" not in r.stdout + r.stderr and "apt-get" not in r.stdout + r.stderr
    assert author.new_processes(before, settle=10) == {}


@pytest.fixture(scope="module")
def bwrap_image(podman_engine, tmp_path_factory) -> str:
    """An image with Debian's python3 and bubblewrap and a user 10001 (what
    a daemon image needs for the bwrap backend), built on the local base."""
    tag = "xgrader-test-bwrap:latest"
    ctx = tmp_path_factory.mktemp("bwrap-image")
    (ctx / "Containerfile").write_text(
        "FROM xgrader-base:bookworm\n"
        "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
        " bubblewrap >/dev/null && rm -rf /var/lib/apt/lists/* && chmod 755 / && useradd -u 10001 -M xgrader\n"
        "USER 10001\n")
    r = subprocess.run(["podman", "build", "-q", "--network=host", "-t", tag, str(ctx)], capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        pytest.fail(f"cannot build {tag}: {r.stderr[-2000:]}")
    return tag


def test_bwrap_in_a_non_root_container_without_capabilities(author, bwrap_image):
    """The daemon's situation in a pod with runAsNonRoot, every capability
    dropped and no-new-privileges (emulated with podman's flags): bwrap
    grades with user namespaces alone, given an unmasked /proc; the
    container's seccomp profile (podman's default) denies sethostname, so
    jobs keep the container's hostname."""
    cmd = ["podman", "run", "--rm", "--user", "10001", "--cap-drop=all", "--security-opt", "no-new-privileges",
           "--security-opt", "unmask=ALL", "--network=none",
           "-v", f"{author.code}:/code:ro", "-v", f"{Path(author.python).parents[1]}:{Path(author.python).parents[1]}:ro",
           "-e", "PYTHONPATH=/code", "-e", "HOME=/tmp", bwrap_image,
           author.python, "-m", "xgrader", "check", "--sandbox", "bwrap", "--handlers", "/code/payload_handlers",
           "--all"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    n = sum(1 for p in (author.code / "payload_handlers").iterdir() if (p / "assignment.toml").is_file())
    assert r.returncode == 0 and f"{n}/{n} assignments pass" in r.stdout, (r.stdout[-3000:], r.stderr[-3000:])
    assert "sandbox_hostname_denied" in r.stderr and "bwrap as uid 10001" in r.stderr, r.stderr
    assert "fork_server_unavailable" not in r.stderr, r.stderr


def test_the_wheel_in_an_authors_venv(author, tmp_path_factory):
    """What an author does: pip install the wheel into a venv of their own
    (Debian's python3, no checkout, no PYTHONPATH), then grade, check and
    run the demo from their home folder."""
    wheels = Path(tempfile.mkdtemp(prefix="xgrader-author-wheel-", dir="/var/tmp"))
    try:
        wheels.chmod(0o755)
        # Built from a copy of the source tree (a build in place would write build/ into the checkout).
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, check=True).stdout.split(b"\0")
        for name in filter(None, map(os.fsdecode, listed)):
            if (REPO / name).is_file():
                (wheels / "src" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, wheels / "src" / name)
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                            str(wheels / "src")], capture_output=True, text=True, timeout=600, cwd=wheels)
        assert r.returncode == 0, r.stderr[-2000:]
        (wheel,) = wheels.glob("xgrader-*.whl")
        wheel.chmod(0o644)
        venv = author.tmp / "venv"
        home = {"PYTHONPATH": ""}
        made = subprocess.run(author.command("/usr/bin/python3", "-m", "venv", str(venv), **home), capture_output=True,
                              text=True, timeout=120, cwd=author.tmp)
        assert made.returncode == 0, made.stderr
        pip = subprocess.run(author.command(f"{venv}/bin/pip", "install", "-q", "--disable-pip-version-check",
                                            str(wheel), **home), capture_output=True, text=True, timeout=900,
                             cwd=author.tmp)
        assert pip.returncode == 0, pip.stderr[-2000:]
        xgrader = f"{venv}/bin/xgrader"
        before = author.processes()
        run = lambda *a: subprocess.run(author.command(xgrader, *a, **home), capture_output=True, text=True,  # noqa: E731
                                        timeout=600, cwd=author.home)
        samples = f"{venv}/lib/python3.11/site-packages/xgrader/_examples/sum_digits/samples"
        r = run("grade", "--sandbox", "bwrap", "--payload", "sum_digits", f"{samples}/wrong_offbyone.py")
        assert r.returncode == 0 and json.loads(r.stdout)["score"] == 1, (r.stdout, r.stderr)
        r = run("check", "--sandbox", "bwrap", "sum_digits")
        assert r.returncode == 0 and "PASS  sum_digits" in r.stdout, (r.stdout, r.stderr)
        r = run("demo", "--timeout", "240")
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        assert author.new_processes(before, settle=10) == {}
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
