"""The attack suite's fixtures: every sandboxed backend (never `unsafe`, which
is no sandbox), canaries planted in the daemon's environment and config, and a
grading kit over tests/attacks/assignments (canaries in hidden tests and the
reference solution).

The `bwrap_user*` params are the non-root configuration: the backend lives
in a process of an unprivileged user (tests/support/user_backend.py), with
no cgroup it may create on this host (rlimit mode): fork servers (the run()
attacks go through the runner's program mode there), cold starts only, and
the warm pool.

`sandbox` is session-scoped and parametrised, so pytest runs the whole suite
backend by backend; its teardown (aftermath.py) then checks, per backend and
whatever tests ran, that an ordinary submission still grades and nothing of
any attack is left."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.support.sandbox import BACKEND_PARAMS, docker_settings, plain_settings
from xgrader.config import Settings
from xgrader.grading import Grader
from xgrader.handlers.expected import ExpectedStore
from xgrader.job import GradeRequest
from xgrader.backends import make_backend

# The instructor tests of the target assignments run inside sandboxes, never here.
collect_ignore = ["assignments"]

ATTACK_PARAMS = [p for p in BACKEND_PARAMS if p.values[0] != "unsafe"]
# bwrap behind the warm pool: student-code sandboxes are pre-started ones.
ATTACK_PARAMS.insert(1, pytest.param("bwrap_warm", id="bwrap_warm"))
# The non-root configuration (see the module docstring).
USER_PARAMS = {"bwrap_user": ("forked", {}), "bwrap_user_cold": ("cold", {"sandbox_fork_server": False}),
               "bwrap_user_warm": ("cold", {"warm_pool": 1})}
# The author's rootless podman (docker backend as the same user; no cgroup
# limits on this cgroup v1 host: rlimits).
USER_PARAMS["podman_user"] = ("cold", {})
ATTACK_PARAMS += [pytest.param(name, id=name) for name in USER_PARAMS]
ASSIGNMENTS = Path(__file__).parent / "assignments"

CANARY_ENV = "CANARY_ENV_d41b7e"            # the queue password in the daemon's environment
CANARY_KEY = "CANARY_LLMKEY_90ac13"         # the LLM key
CANARY_CONFIG = "CANARY_CONFIG_5b2f8d"      # a secret in the daemon's config file
CANARY_TESTS = "CANARY_TESTS_c02e55"        # in tests/attacks/assignments/*/tests
CANARY_SOLUTION = "CANARY_SOLUTION_7f3a91"  # in tests/attacks/assignments/*/solution
CANARIES = (CANARY_ENV, CANARY_KEY, CANARY_CONFIG, CANARY_TESTS, CANARY_SOLUTION)


def settings_for(name: str, request: pytest.FixtureRequest, **kw) -> Settings:
    if name == "docker":
        return docker_settings(request.getfixturevalue("podman_engine"), **kw)
    if name == "bwrap_warm":
        return Settings(sandbox="bwrap", warm_pool=1, **kw)
    return plain_settings(name, **kw)


@pytest.fixture(scope="session")
def config_file() -> Path:
    """The daemon's config file, holding a secret, on the host."""
    folder = Path(tempfile.mkdtemp(prefix="xgrader-attack-config-"))
    path = folder / "xgrader.toml"
    path.write_text(f'queue_password = "{CANARY_CONFIG}"\n')
    yield path
    path.unlink()
    folder.rmdir()


@pytest.fixture(scope="session", params=ATTACK_PARAMS)
def sandbox(request, tmp_path_factory):
    if request.param in USER_PARAMS:
        b = _user_sandbox(request)
    else:
        b = make_backend(settings_for(request.param, request))
    b.param_name = request.param  # which variant (bwrap, bwrap_cold, bwrap_warm, docker, bwrap_user...)
    yield b
    try:  # after the last test that used this backend, in any order
        from tests.attacks import aftermath
        if is_user(b):
            from tests.support.user_backend import UserGrader
            grader = UserGrader(b)
        else:
            settings = settings_for(request.param, request, handlers=ASSIGNMENTS)
            grader = AttackGrader(b, settings, tmp_path_factory.mktemp("aftermath-expected"))
        aftermath.check(b, grader)
    finally:
        b.close()


def _user_sandbox(request):
    from tests.support.unprivileged import user_backend
    author = request.getfixturevalue("author")
    variant, extra = USER_PARAMS[request.param]
    if request.param == "podman_user":
        extra = {"sandbox": "docker", "docker_url": request.getfixturevalue("author_podman")}
    else:
        extra = {"sandbox": "bwrap", **extra}
    baseline = author.processes()
    b = user_backend(author, variant, handlers=author.code / "tests/attacks/assignments", **extra)
    b.author, b.baseline = author, baseline
    return b


def is_user(backend) -> bool:
    return getattr(backend, "param_name", "").startswith(("bwrap_user", "podman_user"))


def leftover_processes(backend) -> list:
    """Processes a job left: below this process, or for the non-root
    configuration, below the user's backend process (the fork servers and
    idle warm sandboxes are no job's)."""
    if is_user(backend):
        return [x for x in backend.leftovers() if x.startswith("process")]
    return descendants()


@pytest.fixture(autouse=True)
def planted_secrets(monkeypatch):
    """The daemon's secrets, as the daemon would hold them, during every attack."""
    monkeypatch.setenv("XGRADER_QUEUE_PASSWORD", CANARY_ENV)
    monkeypatch.setenv("XGRADER_HINTS__API_KEY", CANARY_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)


def leaks(*texts: str) -> list[str]:
    """Canaries found in any of `texts` (results, feedback, student-visible output)."""
    return [c for c in CANARIES if any(c in t for t in texts)]


class AttackGrader:
    """The real grading path (Grader -> handlers -> sandboxes) on one backend."""

    def __init__(self, backend, settings: Settings, cache: Path) -> None:
        self.backend = backend
        self.settings = settings
        self.grader = Grader(settings, backend, store=ExpectedStore(cache, runner_dir=settings.runner_dir))

    def request(self, grader: str, code: str = "", files: dict[str, bytes] | None = None) -> GradeRequest:
        return GradeRequest(grader=grader, student_response=code, files=files or {},
                            submission_id="attack-1", label="attack")

    def grade(self, grader: str, code: str = "", files: dict[str, bytes] | None = None):
        return self.grader.grade(self.request(grader, code, files))

    def pipeline(self, grader: str, code: str = "", files: dict[str, bytes] | None = None):
        from xgrader import pipeline
        return pipeline.grade_request(self.request(grader, code, files), self.settings, self.backend)


@pytest.fixture(scope="session")
def attack_grader(sandbox, request, tmp_path_factory) -> AttackGrader:
    name = sandbox.param_name
    if is_user(sandbox):
        from tests.support.user_backend import UserGrader
        return UserGrader(sandbox)
    settings = settings_for(name, request, handlers=ASSIGNMENTS)
    return AttackGrader(sandbox, settings, tmp_path_factory.mktemp("attack-expected"))


def report_texts(report, reply=None) -> list[str]:
    texts = [report.model_dump_json()]
    from xgrader import feedback
    texts.append(feedback.render_html(report))
    if reply is not None:
        texts.append(reply.model_dump_json())
    return texts


def descendants(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, comm) of every live descendant of `pid` (default: this process)."""
    from xgrader.daemon.proctree import descendants as tree
    out = []
    for p in tree(pid or os.getpid()):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2] != "Z":
            out.append((p, stat[stat.find("(") + 1:stat.rfind(")")]))
    return out
