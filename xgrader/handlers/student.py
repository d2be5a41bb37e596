"""The student's code, live in a sandbox behind the runner (sandbox/runner.py).

:class:`StudentRunner` starts the sandbox, loads the entry module and sends
requests, each with its own timeout. A request that runs over, or a runner
that dies (memory, CPU, os._exit), kills that sandbox; :meth:`restart` gives a
fresh one. Replies are untrusted data: only the one echoing our request id is
taken (anything else the student wrote to the channel is dropped).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import structlog

from xgrader.errors import InfraError
from xgrader.sandbox.base import (
    Backend, ChannelError, Limits, RunningSandbox, SandboxError, SandboxJob, SandboxResult, Verdict,
    clean_text,
)

log = structlog.get_logger(__name__)

# Output per request the host keeps (the runner already caps at 64 KiB).
OUTPUT_KEEP = 16_000


class RequestTimeout(Exception):
    """The student's code did not answer in time; the sandbox was killed."""


class RunnerDied(Exception):
    """The runner went away mid-request (limit, crash, os._exit)."""

    def __init__(self, result: SandboxResult | None, verdict: Verdict | None = None) -> None:
        self.result = result
        self.verdict = verdict or (result.verdict if result else None)
        super().__init__(f"student process ended: {self.verdict.value if self.verdict else 'unknown'}")


class StudentRunner:
    def __init__(self, backend: Backend, files: dict[str, bytes], limits: Limits, *,
                 module: str, entry: str, label: str, submission_id: str = "") -> None:
        self.backend = backend
        self.files = files
        self.limits = limits
        self.module = module
        self.entry = entry
        self.label = label
        self.submission_id = submission_id
        self._ids = itertools.count(1)
        self._box: RunningSandbox | None = None
        self.starts = 0
        self.load_reply: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self, load_timeout: float) -> dict[str, Any]:
        """Start a sandbox and load the module; returns the load reply
        (ok/names or error), or raises RequestTimeout / RunnerDied."""
        job = SandboxJob(argv=self.backend.python_argv(), files=self.files, limits=self.limits,
                         channel=True, label=self.label)
        try:
            self._box = self.backend.start(job)
        except SandboxError as exc:
            raise InfraError(f"student sandbox did not start: {exc}") from exc
        self.starts += 1
        self.load_reply = self.request({"op": "load", "module": self.module, "path": self.entry,
                                        "output_bytes": self.limits.output_bytes}, load_timeout)
        return self.load_reply

    def restart(self, load_timeout: float) -> dict[str, Any]:
        self.close()
        return self.start(load_timeout)

    def close(self) -> SandboxResult | None:
        box, self._box = self._box, None
        if box is None:
            return None
        try:
            box.channel.send({"op": "exit", "id": 0})
        except (ChannelError, OSError):
            pass
        box.kill()
        return box.wait(timeout=1.0)

    @property
    def alive(self) -> bool:
        return self._box is not None

    # -- requests --------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> int:
        if self._box is None:
            raise RunnerDied(None)
        rid = next(self._ids)
        try:
            self._box.channel.send({**message, "id": rid})
        except ChannelError:
            raise self._died() from None
        return rid

    def receive(self, rid: int, timeout: float, index: int | None = None) -> dict[str, Any]:
        """The reply to request `rid` (and batch item `index`), within `timeout`."""
        assert self._box is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill("timeout")
                raise RequestTimeout()
            try:
                msg = self._box.channel.recv(left)
            except TimeoutError:
                continue
            except ChannelError:
                raise self._died() from None
            if not isinstance(msg, dict) or msg.get("id") != rid:
                continue
            if index is not None and msg.get("index") != index and not msg.get("done"):
                continue
            if msg.get("output_limit"):
                # The runner ends itself at the output limit; the verdict is that limit.
                raise RunnerDied(self._kill("output_limit"), Verdict.output)
            return clean_reply(msg)

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self.receive(self.send(message), timeout)

    def _kill(self, why: str) -> SandboxResult | None:
        box, self._box = self._box, None
        if box is None:
            return None
        log.info("student_runner_killed", reason=why, submission_id=self.submission_id, label=self.label)
        box.kill()
        return box.wait(timeout=1.0)

    def _died(self) -> RunnerDied:
        box, self._box = self._box, None
        result = box.wait(timeout=2.0) if box is not None else None
        if result is not None and result.verdict is Verdict.sandbox_error:
            raise InfraError(f"student sandbox failed: {result.error}")
        return RunnerDied(result)


def clean_reply(msg: dict[str, Any]) -> dict[str, Any]:
    """Strip control characters from the text fields a reply carries."""
    out = dict(msg)
    for key in ("stdout", "stderr", "repr"):
        if key in out:
            text = clean_text(str(out[key]))
            out[key] = text if len(text) <= OUTPUT_KEEP else text[:OUTPUT_KEEP] + "\n[output truncated]"
    err = out.get("error")
    if isinstance(err, dict):
        out["error"] = {k: (clean_text(v, 8000) if isinstance(v, str) else v) for k, v in err.items()}
    elif err is not None:
        out["error"] = {"type": "Error", "message": clean_text(str(err), 2000)}
    return out
