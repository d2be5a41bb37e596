"""The student's code, live in a sandbox behind the runner (sandbox/runner.py).

:class:`StudentRunner` starts the sandbox, loads the entry module and sends
requests, each with its own timeout. A request that runs over, or a runner
that dies (memory, CPU, os._exit), kills that sandbox; :meth:`restart` gives a
fresh one. Replies are untrusted data: only the one echoing our request id is
taken (anything else the student wrote to the channel is dropped).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import structlog

from xgrader.errors import InfraError
from xgrader.backends.base import (
    Backend, ChannelError, Limits, RunningSandbox, SandboxError, SandboxJob, SandboxResult, Verdict,
    clean_text,
)
from xgrader.backends.channel import FdChannel

log = structlog.get_logger(__name__)

# Output per request the host keeps (the runner already caps at 64 KiB).
OUTPUT_KEEP = 16_000


class RequestTimeout(Exception):
    """The student's code did not answer in time; the sandbox was killed.
    `sample`: where the code was shortly before (see clean_sample), if known."""

    def __init__(self, sample: list[list[Any]] | None = None) -> None:
        super().__init__("timeout")
        self.sample = sample


class RunnerDied(Exception):
    """The runner went away mid-request (limit, crash, os._exit)."""

    def __init__(self, result: SandboxResult | None, verdict: Verdict | None = None) -> None:
        self.result = result
        self.verdict = verdict or (result.verdict if result else None)
        super().__init__(f"student process ended: {self.verdict.value if self.verdict else 'unknown'}")


class StudentRunner:
    def __init__(self, backend: Backend, files: dict[str, bytes], limits: Limits, *,
                 module: str, entry: str, label: str, submission_id: str = "",
                 after_reply: list | None = None, prelude: str | None = None, sample: bool = True,
                 cpu: int | None = None) -> None:
        self.backend = backend
        self.cpu = cpu            # SandboxJob.cpu of each sandbox it starts
        self.prelude = prelude
        self.sample = sample      # ask for stack samples (explanations of time limits)
        self.after_reply = after_reply
        self.files = files
        self.limits = limits
        self.module = module
        self.entry = entry
        self.label = label
        self.submission_id = submission_id
        self._ids = itertools.count(1)
        self._box: RunningSandbox | None = None
        self.starts = 0
        self.last_start_s = 0.0   # how long the last sandbox took to start
        self.load_reply: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------
    def open_box(self) -> None:
        """A fresh sandbox with the runner waiting on its channel, nothing loaded."""
        job = SandboxJob(argv=self.backend.python_argv(), files=self.files, limits=self.limits,
                         channel=True, label=self.label, cpu=self.cpu)
        started = time.monotonic()
        try:
            self._box = self.backend.start(job)
        except SandboxError as exc:
            raise InfraError(f"student sandbox did not start: {exc}") from exc
        self.starts += 1
        self.last_start_s = time.monotonic() - started   # not the student's time

    def start(self, load_timeout: float) -> dict[str, Any]:
        """Start a sandbox and load the module; returns the load reply
        (ok/names or error), or raises RequestTimeout / RunnerDied."""
        self.open_box()
        load = {"op": "load", "module": self.module, "path": self.entry,
                "output_bytes": self.limits.output_bytes}
        if self.sample:
            load["sample_after"] = sample_after(load_timeout)
        if self.prelude:
            load["prelude"] = self.prelude
        self.load_reply = self.request(load, load_timeout)
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
        box.kill()  # nothing of the job runs past this point
        if self.after_reply is not None:  # the wait for it to be gone: after the reply
            self.after_reply.append(lambda: box.wait(timeout=1.0))
            return None
        return box.wait(timeout=1.0)

    @property
    def alive(self) -> bool:
        return self._box is not None

    def next_id(self) -> int:
        """A request id this runner has not seen from the host (a peer
        numbers its own requests from there)."""
        return next(self._ids)

    def peer_fds(self) -> tuple[int, int] | None:
        """(read, write): this runner's channel as the host holds it, for a
        sandbox that will talk to the runner itself (SandboxJob.peer); None
        when the channel is not a pair of descriptors (docker's socket). The
        host stops reading it meanwhile; :meth:`lost` takes it back."""
        channel = getattr(self._box, "channel", None)
        if isinstance(channel, FdChannel):
            return channel.read_fd, channel.write_fd
        return None

    def lost(self, why: str, sample: list[list[Any]] | None = None) -> None:
        """The peer that talked to this runner gave up on it (`timeout`: no
        reply in the test's time; `output`: it answered with the output
        limit; `bad`: it sent something unreadable; anything else: its channel
        closed; `sample`: where a call that ran over was). Ends
        the sandbox and raises what :meth:`request` would have raised."""
        if why == "timeout":
            self._kill("timeout")
            raise RequestTimeout(sample)
        if why == "output":
            raise RunnerDied(self._kill("output_limit"), Verdict.output)
        if why == "bad":  # an unreadable or oversized reply (the host's channel refuses those too)
            raise RunnerDied(self._kill("unreadable reply"))
        raise self._died()

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
        sample = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill("timeout")
                raise RequestTimeout(sample)
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
            if "sample" in msg:   # still running at sample_after: keep where, wait on
                sample = clean_sample(msg.get("sample"))
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


def sample_after(timeout: float) -> float:
    """When to ask a request for a stack sample: late, but early enough for
    the sample to arrive before the host gives up at `timeout`."""
    return round(max(timeout - 0.25, timeout * 0.75), 3)


def clean_sample(sample: Any) -> list[list[Any]] | None:
    """A runner's stack sample or error frames, untrusted: at most 20
    [file, line] pairs of short names and positive ints, else None."""
    frames = sample.get("frames") if isinstance(sample, dict) else sample
    if not isinstance(frames, list):
        return None
    out = []
    for item in frames[-20:]:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) \
                and type(item[1]) is int and 0 < item[1] < 10**7 and len(item[0]) <= 200:
            out.append([clean_text(item[0], 200), item[1]])
    return out or None


def clean_reply(msg: dict[str, Any]) -> dict[str, Any]:
    """Strip control characters from the text fields a reply carries."""
    out = dict(msg)
    for key in ("stdout", "stderr", "repr"):
        if key in out:
            text = clean_text(str(out[key]))
            out[key] = text if len(text) <= OUTPUT_KEEP else text[:OUTPUT_KEEP] + "\n[output truncated]"
    err = out.get("error")
    if isinstance(err, dict):
        err = {k: (clean_text(v, 8000) if isinstance(v, str) else v) for k, v in err.items()}
        err["frames"] = clean_sample(err.get("frames"))
        recursion = clean_sample([err.get("recursion")])
        err["recursion"] = recursion[0] if recursion else None
        out["error"] = err
    elif err is not None:
        out["error"] = {"type": "Error", "message": clean_text(str(err), 2000)}
    return out


# -- runner bytecode ------------------------------------------------------------------

RUNNER_MODULE = "runner_core.py"


def _cache_tag(python: str) -> str | None:
    """`cpython-311` for .../python3.11 (the sandbox interpreter's __pycache__ tag)."""
    name = os.path.basename(os.path.realpath(python))
    if name.startswith("python3.") and name[8:].isdigit():
        return f"cpython-3{name[8:]}"
    return None


def _fresh(pyc: Path, source: os.stat_result) -> bool:
    """A timestamp-based pyc recorded for exactly this source mtime and size."""
    try:
        with open(pyc, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return (len(head) == 16 and int.from_bytes(head[4:8], "little") == 0
            and int.from_bytes(head[8:12], "little") == int(source.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(head[12:16], "little") == source.st_size & 0xFFFFFFFF)


def ensure_runner_bytecode(runner_dir: Path, python: str) -> bool:
    """Make sure the runner's bytecode for the sandbox interpreter is in
    runner_dir/__pycache__, compiling it with that interpreter when missing or
    stale. Every sandbox then imports it instead of compiling the runner
    (~3-5 ms of CPU each). A few stat calls when it is there; never raises: a
    read-only runner_dir costs speed, not correctness (the sandbox compiles
    the source itself). Returns whether fresh bytecode is in place."""
    source = Path(runner_dir) / RUNNER_MODULE
    try:
        st = source.stat()
    except OSError:
        return False
    tag = _cache_tag(python)
    cache = source.parent / "__pycache__"
    pattern = f"runner_core.{tag}.pyc" if tag else "runner_core.*.pyc"
    if any(_fresh(p, st) for p in cache.glob(pattern)):
        return True
    if not os.access(source.parent, os.W_OK) or (cache.exists() and not os.access(cache, os.W_OK)):
        return False
    try:
        done = subprocess.run(
            [python, "-I", "-S", "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)",
             str(source)], env={}, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("runner_bytecode_failed", error=str(exc)[:200])
        return False
    if done.returncode != 0:
        log.warning("runner_bytecode_failed", error=done.stderr.decode(errors="replace")[-300:])
        return False
    log.info("runner_bytecode_written", path=str(cache))
    return True
