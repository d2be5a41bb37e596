"""Chaos soak: grader replicas against one bundled queue while things break.

    python -m bench.soak                       # full run: 3 replicas, 5,000 submissions
    python -m bench.soak --submissions 300 --replicas 2 --kills 1 --kill-every 8 15 --queue-restarts 1

The harness starts the bundled queue server (subprocess), a fault-injecting
proxy between the replicas and the queue (resets, 502s, 2 s stalls, replies
lost after the request took effect), an LMS callback receiver that is slow
and sometimes fails, and N `xgrader run` replicas inside a cgroup of the
soak's own. It submits a mix of correct, wrong, crashing, timing-out and
hostile submissions (bench/soak_samples/ against bench/soak_handlers/soak/),
SIGKILLs a random replica every 20-40 s (restarting it), restarts the queue
server, and at the end checks:

- every submission has exactly one delivered result (none missing, none twice);
- every score equals what `xgrader grade` gives the same submission alone;
- no leftover sandbox process, cgroup, or temp file;
- no replica logged an unhandled exception, and each exits 0 on SIGTERM.

Traffic goes to 127.0.0.1 only, and every loop is bounded in time. Exit
status 1 (and the work directory kept) when a check fails.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import requests

from bench.faultproxy import FaultProxy, QuietServer

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "bench" / "soak_samples"
QUEUE = "soak"
GRADER = ("grader", "grader-pass")
LMS = ("lms", "lms-pass")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the LMS side: a callback receiver that is slow and sometimes fails --------------


class Callbacks:
    def __init__(self, fail: float, slow: float, seed: int) -> None:
        self.fail, self.slow = fail, slow
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.delivered: dict[str, list[dict]] = defaultdict(list)  # answered with 200
        self.refused = 0
        self.server = QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/cb/"

    def _handler(self):
        cb = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                with cb.lock:
                    r = cb.rng.random()
                if r < cb.slow:
                    time.sleep(1.5)
                if r > 1 - cb.fail:
                    with cb.lock:
                        cb.refused += 1
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                key = self.path.rsplit("/", 2)[-2] if self.path.endswith("/") else self.path.rsplit("/", 1)[-1]
                try:
                    body = json.loads(form["xqueue_body"][0])
                except Exception:
                    body = {"unparseable": True}
                with cb.lock:
                    cb.delivered[key].append(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

        return H


# -- processes ----------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen | None = None
    starts: int = 0
    preexec: Any = None

    def start(self) -> None:
        self.starts += 1
        fh = open(self.log, "ab")
        fh.write(f"\n=== start {self.starts} ===\n".encode())
        fh.flush()
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            preexec_fn=self.preexec,
        )
        fh.close()

    def kill(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, grace: float = 30) -> int | None:
        if not self.popen:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


# -- submissions ------------------------------------------------------------------


def load_samples(assignment: str) -> dict[str, str]:
    """name -> code: the soak's mix (correct, wrong, crash, timeout, hostile)."""
    folder = SAMPLES
    out = {p.stem: p.read_text() for p in sorted(folder.glob("*.py"))}
    if not out:
        raise SystemExit(f"no soak samples in {folder}")
    return out


def expected_scores(samples: dict[str, str], payload: str, handlers: Path, env: dict[str, str]) -> dict[str, float]:
    """What `xgrader grade` gives each distinct submission alone (two at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    tmp = Path(tempfile.mkdtemp(prefix="xgsoak-grade-"))

    def one(name: str) -> float:
        path = tmp / name / "submission.py"
        path.parent.mkdir()
        path.write_text(samples[name])
        out = subprocess.run(
            [sys.executable, "-m", "xgrader", "grade", "--handlers", str(handlers), "--payload", payload, str(path)],
            capture_output=True, text=True, env={**env, "XDG_CACHE_HOME": str(tmp / "cache")}, timeout=300, cwd=REPO,
        )
        if out.returncode != 0:
            raise SystemExit(f"xgrader grade failed on {name}: {out.stderr[-2000:]}")
        return json.loads(out.stdout)["score"]

    try:
        with ThreadPoolExecutor(2) as pool:
            return dict(zip(samples, pool.map(one, samples)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def submit_all(server: str, n: int, samples: dict[str, str], payload: str, callback_base: str, seed: int) -> dict[str, str]:
    """Submit like the LMS, each with its own callback URL; returns key -> sample name."""
    rng = random.Random(seed)
    names = sorted(samples)
    s = requests.Session()
    r = s.post(server + "login/", data={"username": LMS[0], "password": LMS[1]}, timeout=10)
    assert r.json()["return_code"] == 0, r.text
    plan: dict[str, str] = {}
    for i in range(n):
        name = rng.choice(names)
        key = f"s{i:05d}"
        header = {"lms_callback_url": callback_base + key, "lms_key": key, "queue_name": QUEUE}
        body = {
            "student_response": samples[name],
            "grader_payload": payload,
            "student_info": json.dumps({"anonymous_student_id": f"student{i % 97}", "submission_time": "20261122161500"}),
        }
        for attempt in range(20):
            try:
                r = s.post(server + "submit/", data={"xqueue_header": json.dumps(header), "xqueue_body": json.dumps(body)}, timeout=10)
                if r.json()["return_code"] == 0:
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"could not submit {key}")
        plan[key] = name
    return plan


# -- leftovers --------------------------------------------------------------------


class Scope:
    """A cgroup (per controller on v1) every replica starts in: their job
    cgroups nest inside it, so leftovers are exactly what *this* soak left
    (other graders on the machine are not counted). None when cgroups are not
    writable: then the whole machine is checked."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []
        root = Path("/sys/fs/cgroup")
        try:
            own = {}
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                _, controllers, path = line.split(":", 2)
                for c in controllers.split(",") if controllers else [""]:
                    own[c] = path.lstrip("/")
            if (root / "cgroup.controllers").exists():
                parents = [root / own.get("", "")]
            else:
                # Every controller a job cgroup may use; co-mounted ones ("cpu,cpuacct") once.
                seen: dict[Path, Path] = {}
                for c in ("memory", "pids", "cpuacct", "cpu"):
                    if (root / c).is_dir():
                        seen.setdefault((root / c).resolve(), root / c / own.get(c, ""))
                parents = list(seen.values())
            for parent in parents:
                d = parent / f"xgsoak-{os.getpid()}"  # not xgrader-*: cleanup_stale() would take it
                d.mkdir()
                self.dirs.append(d)
        except (OSError, KeyError):
            self.remove()
            self.dirs = []

    @property
    def active(self) -> bool:
        return bool(self.dirs)

    def join(self) -> None:
        """preexec_fn of a replica (runs in the child before exec)."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    def cpu_seconds(self) -> float | None:
        """CPU used so far by everything that ran in the scope (cpuacct / cpu.stat)."""
        for d in self.dirs:
            if (d / "cpuacct.usage").exists():
                return int((d / "cpuacct.usage").read_text()) / 1e9
            if (d / "cpu.stat").exists() and (d / "cgroup.controllers").exists():
                stat = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines())
                return int(stat["usage_usec"]) / 1e6
        return None

    def leftovers(self) -> list[str]:
        from xgrader.backends.cgroups import DAEMON_LEAF
        found = []
        for d in self.dirs:
            for sub in sorted(d.rglob("*")):
                # cgroup v2: the daemon moves itself into a leaf it keeps for its next start.
                if sub.is_dir() and not (sub.name == DAEMON_LEAF and sub.parent == d):
                    found.append(f"cgroup {sub}")
            for procs in d.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    found.append(f"process {pid} {_cmdline(pid)} (in {procs.parent})")
        return sorted(set(found))

    def remove(self) -> None:
        for d in self.dirs:
            for sub in sorted(d.rglob("*"), reverse=True):
                if sub.is_dir():
                    try:
                        sub.rmdir()
                    except OSError:
                        pass
            try:
                d.rmdir()
            except OSError:
                pass


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def leftovers(scope: Scope, tmp_roots: list[Path]) -> list[str]:
    if scope.active:
        found = scope.leftovers()
    else:  # no cgroup of our own: anything of the kind on the machine counts
        found = []
        for pattern in ("/sys/fs/cgroup/xgrader-*", "/sys/fs/cgroup/*/xgrader-*", "/sys/fs/cgroup/*/*/xgrader-*",
                        "/sys/fs/cgroup/*/*/*/xgrader-*"):
            found += [f"cgroup {p}" for p in glob.glob(pattern)]
        out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            if "bwrap" in line or "/opt/xgrader/runner.py" in line:
                found.append(f"process {line.strip()}")
    for root in tmp_roots:
        if root.exists():
            found += [f"temp {p}" for p in root.iterdir()]
    return found


# -- the run ----------------------------------------------------------------------


@dataclass
class Summary:
    submissions: int = 0
    delivered_once: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong_score: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    kills: int = 0
    queue_restarts: int = 0
    seconds: float = 0.0
    proxy: dict = field(default_factory=dict)
    callbacks_refused: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.wrong_score or self.leftovers or self.log_errors)

    def table(self) -> str:
        rows = [
            ("submissions", self.submissions), ("delivered exactly once", self.delivered_once),
            ("missing", len(self.missing)), ("delivered twice", len(self.duplicated)),
            ("score differs from `xgrader grade`", len(self.wrong_score)),
            ("leftovers", len(self.leftovers)), ("replica log errors", len(self.log_errors)),
            ("replica SIGKILLs", self.kills), ("queue restarts", self.queue_restarts),
            ("LMS callbacks refused (retried)", self.callbacks_refused),
            ("proxy faults", ", ".join(f"{k}={v}" for k, v in sorted(self.proxy.items()))),
            ("seconds", f"{self.seconds:.1f}"), ("result", "PASS" if self.ok else "FAIL"),
        ]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run(
    *, submissions: int = 5000, replicas: int = 3, kills: int | None = None, queue_restarts: int = 2,
    kill_every: tuple[float, float] = (20, 40), payload: str = '{"grader": "soak"}', handlers: Path | None = None,
    sandbox: str = "bwrap", concurrency: int = 2, lease_timeout: float = 10, timeout: float = 3600,
    faults: tuple[float, float, float, float] = (0.02, 0.03, 0.01, 0.01), seed: int = 1,
    workdir: Path | None = None, log: Any = None,
) -> Summary:
    """One soak; returns the summary (``summary.ok`` says whether every check held).
    `faults` are the proxy's (reset, 5xx, 2 s stall, lost reply) probabilities per request."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.monotonic()
    work = Path(workdir or tempfile.mkdtemp(prefix="xgsoak-"))
    work.mkdir(parents=True, exist_ok=True)
    handlers = handlers or (REPO / "bench" / "soak_handlers")
    rng = random.Random(seed)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
    base_env["PYTHONUNBUFFERED"] = "1"
    samples = load_samples(payload)
    say(f"soak: scoring {len(samples)} distinct samples with `xgrader grade` alone")
    expected = expected_scores(samples, payload, handlers, {**base_env, "XGRADER_SANDBOX": sandbox})
    summary = Summary()
    scope = Scope()
    procs: list[Proc] = []
    proxy = callbacks = None
    try:
        qport = free_port()
        queue = Proc("queue", [sys.executable, "-m", "xgrader", "queue", "serve", "--host", "127.0.0.1",
                               "--port", str(qport), "--db", str(work / "queue.db"), "--queue", QUEUE,
                               "--user", ":".join(GRADER), "--user", ":".join(LMS),
                               "--lease-timeout", str(lease_timeout)],
                     base_env, work / "queue.log")
        procs.append(queue)
        queue.start()
        direct = f"http://127.0.0.1:{qport}/xqueue/"
        wait_http(direct + "status/")
        proxy = FaultProxy(f"http://127.0.0.1:{qport}", reset=faults[0], error=faults[1], stall=faults[2],
                           lost_reply=faults[3], seed=seed).start()
        callbacks = Callbacks(fail=0.1, slow=0.05, seed=seed)

        tmp_roots = []
        reps: list[Proc] = []
        for i in range(replicas):
            tmp_root = work / f"tmp-{i}"
            tmp_root.mkdir()
            tmp_roots.append(tmp_root)
            env = {**base_env, "TMPDIR": str(tmp_root), "XGRADER_QUEUE_URL": proxy.url + "/xqueue/",
                   "XGRADER_QUEUE_NAMES": QUEUE, "XGRADER_QUEUE_USER": GRADER[0],
                   "XGRADER_QUEUE_PASSWORD": GRADER[1], "XGRADER_HANDLERS": str(handlers),
                   "XGRADER_SANDBOX": sandbox, "XGRADER_CONCURRENCY": str(concurrency),
                   "XGRADER_LOG_FORMAT": "json", "XGRADER_POLL_MAX_S": "0.5", "XGRADER_SHUTDOWN_GRACE_S": "20",
                   "XGRADER_REQUEST_TIMEOUT_S": "5", "XDG_CACHE_HOME": str(work / "cache")}
            rep = Proc(f"replica{i}", [sys.executable, "-m", "xgrader", "run"], env, work / f"replica{i}.log",
                       preexec=scope.join if scope.active else None)
            rep.start()
            reps.append(rep)
            procs.append(rep)

        say(f"soak: submitting {submissions} to {direct} ({replicas} replicas behind {proxy.url})")
        plan = submit_all(direct, submissions, samples, payload, callbacks.base, seed)
        summary.submissions = len(plan)

        # Chaos until everything is delivered (or the time bound).
        deadline = time.monotonic() + timeout
        next_kill = time.monotonic() + rng.uniform(*kill_every)
        restart_at = [(i + 1) / (queue_restarts + 1) for i in range(queue_restarts)]
        max_kills = kills if kills is not None else 10**9
        last_report = 0.0
        while time.monotonic() < deadline:
            with callbacks.lock:
                done = sum(1 for k in plan if callbacks.delivered.get(k))
            if done >= len(plan):
                break
            now = time.monotonic()
            if now - last_report > 10:
                say(f"soak: {done}/{len(plan)} delivered, {summary.kills} kills, "
                    f"{summary.queue_restarts} queue restarts, {now - started:.0f} s")
                last_report = now
            if summary.kills < max_kills and now >= next_kill:
                victim = rng.choice(reps)
                say(f"soak: SIGKILL {victim.name}")
                victim.kill()
                summary.kills += 1
                time.sleep(0.5)
                victim.start()
                next_kill = now + rng.uniform(*kill_every)
            if restart_at and done >= restart_at[0] * len(plan):
                restart_at.pop(0)
                say("soak: restarting the queue server")
                queue.stop(grace=10)
                time.sleep(1.0)
                queue.start()
                wait_http(direct + "status/")
                summary.queue_restarts += 1
            time.sleep(0.2)
        else:
            say(f"soak: time bound of {timeout:g} s reached")

        # Quiesce: let stragglers' callbacks land, then stop replicas gracefully.
        time.sleep(3)
        for rep in reps:
            code = rep.stop()
            if code not in (0, None):
                summary.log_errors.append(f"{rep.name} exited {code} on SIGTERM")
        time.sleep(1)

        with callbacks.lock:
            delivered = {k: list(v) for k, v in callbacks.delivered.items()}
        for key, name in plan.items():
            got = delivered.get(key, [])
            if not got:
                summary.missing.append(f"{key} ({name})")
            elif len(got) > 1:
                summary.duplicated.append(f"{key} ({name}) x{len(got)}")
            else:
                summary.delivered_once += 1
                if got[0].get("score") != expected[name]:
                    summary.wrong_score.append(f"{key} ({name}): got {got[0].get('score')}, "
                                               f"grade alone {expected[name]}")
        summary.leftovers = leftovers(scope, tmp_roots)
        for rep in reps:
            summary.log_errors += log_errors(rep)
        summary.proxy = dict(proxy.counts)
        summary.callbacks_refused = callbacks.refused
    finally:
        for proc in procs:
            proc.stop(grace=10)
        if proxy is not None:
            proxy.stop()
        if callbacks is not None:
            callbacks.server.shutdown()
            callbacks.server.server_close()
        scope.remove()
    summary.seconds = time.monotonic() - started
    if summary.ok and workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"soak: work dir kept: {work}")
    return summary


# Log lines that mean an exception nobody handled (structlog JSON lines, or raw
# tracebacks a crashed process printed to stderr).
FATAL_EVENTS = ('"level": "critical"', '"level":"critical"')


def log_errors(rep: Proc) -> list[str]:
    out = []
    for line in rep.log.read_text(errors="replace").splitlines():
        if line.startswith("Traceback (most recent call last)") or any(m in line for m in FATAL_EVENTS):
            out.append(f"{rep.name}: {line[:300]}")
        elif line.startswith("{") and '"exception"' in line:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") in ("error", "critical"):
                out.append(f"{rep.name}: {rec.get('event')}: {str(rec.get('exception'))[-300:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submissions", type=int, default=5000, help="how many to submit (default 5000)")
    ap.add_argument("--replicas", type=int, default=3, help="`xgrader run` replicas (default 3)")
    ap.add_argument("--kills", type=int, default=None, help="at most this many replica kills (default: no cap)")
    ap.add_argument("--kill-every", type=float, nargs=2, default=(20, 40), metavar=("MIN", "MAX"),
                    help="seconds between replica SIGKILLs, uniform in [MIN, MAX] (default 20 40)")
    ap.add_argument("--queue-restarts", type=int, default=2, help="queue server restarts (default 2)")
    ap.add_argument("--sandbox", default="bwrap", help="backend of the replicas (default bwrap)")
    ap.add_argument("--concurrency", type=int, default=2, help="jobs at once per replica (default 2)")
    ap.add_argument("--timeout", type=float, default=3600, help="bound on the whole run in seconds (default 3600)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, help="keep logs and the queue database here")
    args = ap.parse_args(argv)
    s = run(submissions=args.submissions, replicas=args.replicas, kills=args.kills,
            kill_every=tuple(args.kill_every), queue_restarts=args.queue_restarts, sandbox=args.sandbox,
            concurrency=args.concurrency, timeout=args.timeout, seed=args.seed, workdir=args.workdir)
    print(s.table())
    for label, items in (("missing", s.missing), ("twice", s.duplicated), ("score", s.wrong_score),
                         ("leftover", s.leftovers), ("log", s.log_errors)):
        for item in items[:10]:
            print(f"  {label}: {item}")
    return 0 if s.ok else 1


if __name__ == "__main__":
    sys.exit(main())
