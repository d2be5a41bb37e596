"""A real sandbox backend living in a process of an unprivileged user, driven
from the tests (which run as root) over its stdin/stdout.

`python -m tests.support.user_backend SETTINGS_JSON` (as the user, with the
user's venv and a copy of the code: tests/support/unprivileged.py starts it)
builds the backend with make_backend, exactly as `xgrader grade` would for
that user, and answers one JSON request per line:

    {"op": "run", "job": {...}}                  -> {"result": {...}}
    {"op": "grade", "grader", "code", "files"}   -> {"report": {...}}
    {"op": "pipeline", ...same}                  -> {"report": {...}, "reply": {...}}
    {"op": "leftovers"}                          -> {"leftovers": [...]}

Stdlib and xgrader only (the user's venv has no pytest). UserBackend and
UserGrader are the tests' side.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from xgrader.backends.base import Backend, RunningSandbox, SandboxJob, SandboxResult

# The run() attacks go through the runner's program mode, which the fork
# servers serve (a bare `python3 x.py` starts cold): variant "forked".
RUNNER_EXEC = ["python3", "-I", "-S", "/opt/xgrader/runner.py", "exec"]


def _encode_job(job: SandboxJob) -> dict:
    data = job.model_dump(mode="python")
    data["files"] = {k: base64.b64encode(v).decode() for k, v in job.files.items()}
    data["stdin"] = base64.b64encode(job.stdin).decode()
    return data


def _decode_job(data: dict) -> SandboxJob:
    data = dict(data)
    data["files"] = {k: base64.b64decode(v) for k, v in data["files"].items()}
    data["stdin"] = base64.b64decode(data["stdin"])
    return SandboxJob.model_validate(data)


def _files(raw: dict[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (raw or {}).items()}


# -- the user's side ---------------------------------------------------------------
def _leftovers(backend: Any) -> list[str]:
    """What the attacks left in this process's tree: processes other than
    the fork servers and the warm pool's idle sandboxes, temp dirs."""
    from xgrader.daemon.proctree import descendants

    inner = getattr(backend, "inner", backend)
    spare: set[int] = set()
    servers = getattr(inner, "forkservers", None)
    if servers is not None:
        spare |= set(servers.pids())
    for sb in list(getattr(backend, "_idle", ())):
        spare |= {sb.proc.pid, *descendants(sb.proc.pid)}
        try:  # a forked warm sandbox's pid is its init, whose parent is the fork server
            spare.add(int(Path(f"/proc/{sb.proc.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1]))
        except (OSError, ValueError, IndexError):
            pass
    found = []
    for pid in descendants(os.getpid()):
        if pid in spare:
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2:][:1] != b"Z":
            found.append(f"process {pid} ({stat[stat.find(b'(') + 1:stat.rfind(b')')].decode()})")
    found += [f"temp dir {p}" for p in glob.glob(os.path.join(tempfile.gettempdir(), f"xgrader-*-{os.getpid()}-*"))]
    if backend.name == "docker":   # the user's rootless engine: no container of this backend's left
        from xgrader.backends.docker_backend import OWNER
        found += [f"container {c['Id'][:12]}" for c in
                  backend.api.containers(all=True, filters={"label": [f"{OWNER}={backend.owner}"]})]
    return found


def serve(settings_json: str) -> None:
    from xgrader import logs, pipeline
    from xgrader.backends import make_backend
    from xgrader.config import Settings
    from xgrader.grading import Grader
    from xgrader.handlers.expected import ExpectedStore
    from xgrader.job import GradeRequest

    logs.configure(SimpleNamespace(log_format="json", log_level="warning"))
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # nothing else may write on the answers' stream
    settings = Settings(**json.loads(settings_json))
    backend = make_backend(settings)
    grader = Grader(settings, backend, store=ExpectedStore(Path(tempfile.mkdtemp(prefix="user-expected-")),
                                                           runner_dir=settings.runner_dir))
    rlimit_mode = bool(getattr(getattr(backend, "inner", backend), "rlimit_mode", False))
    if backend.name == "docker":   # a rootless engine without cgroup limits: rlimits and sampling too
        backend.limits_summary()
        rlimit_mode = not backend.engine_limits
    out.write(json.dumps({"ready": os.getpid(), "rlimit_mode": rlimit_mode}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "run":
            answer: dict = {"result": backend.run(_decode_job(req["job"])).model_dump(mode="json")}
        elif op in ("grade", "pipeline"):
            request = GradeRequest(grader=req["grader"], student_response=req.get("code", ""),
                                   files=_files(req.get("files")), submission_id="attack-1", label="attack")
            if op == "grade":
                answer = {"report": grader.grade(request).model_dump(mode="json")}
            else:
                report, reply = pipeline.grade_request(request, settings, backend)
                answer = {"report": report.model_dump(mode="json"), "reply": reply.model_dump(mode="json")}
        elif op == "hits":
            answer = {"hits": getattr(backend, "hits", None)}
        elif op == "rss":
            import resource
            answer = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        elif op == "leftovers":
            if hasattr(backend, "wait_ready"):
                backend.wait_ready(timeout=15)
            answer = {"leftovers": _leftovers(backend)}
        else:
            answer = {"error": f"unknown op {op}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    backend.close()


# -- the tests' side ---------------------------------------------------------------
class UserBackend(Backend):
    """The tests' handle on a backend in the user's process: run() only
    (what the attack programs use), plus grade/pipeline for the grading path."""

    def __init__(self, command: list[str], settings: dict, variant: str, env: dict[str, str]) -> None:
        self.name = "bwrap"
        self.variant = variant
        self.proc = subprocess.Popen([*command, json.dumps(settings)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        hello = self.proc.stdout.readline()
        if not hello:
            raise RuntimeError("the user's backend did not start (see stderr above)")
        hello = json.loads(hello)
        self.pid = hello["ready"]  # the helper's own pid
        self.rlimit_mode = hello["rlimit_mode"]

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the user's backend died")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def start(self, job: SandboxJob) -> RunningSandbox:
        raise NotImplementedError("jobs of the user's backend run through run()")

    def run(self, job: SandboxJob) -> SandboxResult:
        if self.variant == "forked" and job.argv[:3] == ["python3", "-I", "-S"] and len(job.argv) == 4:
            job = job.model_copy(update={"argv": [*RUNNER_EXEC, job.argv[3]]})
        return SandboxResult.model_validate(self._ask({"op": "run", "job": _encode_job(job)})["result"])

    def grade(self, op: str, grader: str, code: str, files: dict[str, bytes] | None) -> dict:
        return self._ask({"op": op, "grader": grader, "code": code,
                          "files": {k: base64.b64encode(v).decode() for k, v in (files or {}).items()}})

    def leftovers(self) -> list[str]:
        return self._ask({"op": "leftovers"})["leftovers"]

    def rss_mb(self) -> float:
        """The high-water mark of the user's backend process (the grader)."""
        return self._ask({"op": "rss"})["rss_mb"]

    @property
    def hits(self) -> int | None:
        """The warm pool's hits in the user's process (None: no pool)."""
        return self._ask({"op": "hits"})["hits"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class UserGrader:
    """AttackGrader's interface over the user's backend process."""

    def __init__(self, backend: UserBackend) -> None:
        self.backend = backend

    def grade(self, grader: str, code: str = "", files: dict[str, bytes] | None = None):
        from xgrader.report import GradeReport
        return GradeReport.model_validate(self.backend.grade("grade", grader, code, files)["report"])

    def pipeline(self, grader: str, code: str = "", files: dict[str, bytes] | None = None):
        from xgrader.report import GradeReport
        from xgrader.wire import GraderReply
        answer = self.backend.grade("pipeline", grader, code, files)
        return GradeReport.model_validate(answer["report"]), GraderReply.model_validate(answer["reply"])


if __name__ == "__main__":
    serve(sys.argv[1])
