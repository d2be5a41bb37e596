"""End to end through the bundled queue: `xgrader queue serve` + `xgrader run`
(concurrency 2, bwrap) grading the 11-case benchmark exercise (or, with
``--kind pytest``, payload_handlers/is_prime's 17 pytest tests), next to the
floors measured in the same run.

    python -m bench.throughput                   # 1,000 submissions
    python -m bench.throughput --kind pytest     # the pytest kind (floor: python3 -m pytest per submission)
    python -m bench.throughput --count 10000     # + daemon RSS after 100 and after 10,000
    python -m bench.throughput --warm-pool 0     # without the warm pool (default: xgrader run's, 1)
    python -m bench.throughput --no-forker       # the daemon's parent forks each job child itself

Phases:

1. idle latency: one submission at a time through a recording proxy; reports
   pull-to-post (the daemon's get_submission reply to its put_result request)
   and submit-to-callback (includes the poll interval and LMS delivery);
2. throughput: ``--count`` submissions queued at once, subs/s from the first
   submit to the last LMS callback; CPU per submission of the daemon with
   everything it started (a cgroup of its own) and of the queue server; daemon
   RSS after 100 and after all;
3. floors with 2 workers: the same checks in-process (2 forked processes) and
   one ``python -I`` per submission (2 at a time); for the pytest kind one
   ``python3 -m pytest`` per submission (2 at a time).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs

import requests

from bench import grading as g
from bench.faultproxy import Exchange, FaultProxy, QuietServer
from bench.queue_server import proc_cpu_s
from bench.soak import Proc, Scope, free_port, wait_http

REPO = Path(__file__).resolve().parent.parent
QUEUE = "bench"
GRADER = ("grader", "grader-pass")
LMS = ("lms", "lms-pass")
PAYLOAD = json.dumps({"grader": g.ASSIGNMENT})
TARGET_RATE = 50.0
TARGET_P50_MS = 60.0
TARGETS_P50_MS = {"io": TARGET_P50_MS, "pytest": 80.0}
PEER = {"one connection": 5.6, "two connections": 10.9, "idle submit-to-result ms": 171}


class Sink:
    """The LMS: records when each callback (by lms key) arrived and its score."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrived: dict[str, float] = {}
        self.scores: dict[str, float] = {}
        self.cond = threading.Condition(self.lock)
        sink = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                key = self.path.rstrip("/").rsplit("/", 1)[-1]
                try:
                    score = json.loads(form["xqueue_body"][0]).get("score")
                except (KeyError, ValueError):
                    score = None
                with sink.cond:
                    sink.arrived.setdefault(key, time.monotonic())
                    sink.scores[key] = score
                    sink.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

        self.server = QuietServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb/"

    def wait(self, keys: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(k in self.arrived for k in keys):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.5))
        return True

    def count(self, keys: list[str]) -> int:
        with self.lock:
            return sum(1 for k in keys if k in self.arrived)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class PullPost:
    """Observer on the proxy: pull reply and put_result request times per submission id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pulled: dict[int, float] = {}
        self.posted: dict[int, float] = {}

    def __call__(self, x: Exchange) -> None:
        try:
            if "get_submission/" in x.path:
                env = json.loads(x.response_body)
                if env.get("return_code") == 0:
                    sid = json.loads(json.loads(env["content"])["xqueue_header"])["submission_id"]
                    with self.lock:
                        self.pulled.setdefault(int(sid), x.finished)
            elif "put_result/" in x.path:
                header = parse_qs(x.request_body.decode())["xqueue_header"][0]
                with self.lock:
                    self.posted.setdefault(int(json.loads(header)["submission_id"]), x.started)
        except (ValueError, KeyError, TypeError):
            pass

    def latencies_ms(self) -> list[float]:
        with self.lock:
            return [(self.posted[s] - self.pulled[s]) * 1000 for s in self.pulled if s in self.posted]


def submitter(base: str) -> requests.Session:
    s = requests.Session()
    r = s.post(base + "login/", data={"username": LMS[0], "password": LMS[1]}, timeout=10)
    assert r.json()["return_code"] == 0, r.text
    return s


def submit(s: requests.Session, base: str, sink: Sink, key: str, code: str) -> None:
    header = {"lms_callback_url": sink.url + key, "lms_key": key, "queue_name": QUEUE}
    body = {"student_response": code, "grader_payload": PAYLOAD,
            "student_info": json.dumps({"anonymous_student_id": "s" + key})}
    r = s.post(base + "submit/", data={"xqueue_header": json.dumps(header), "xqueue_body": json.dumps(body)},
               timeout=30)
    assert r.json()["return_code"] == 0, r.text


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def daemon(work: Path, url: str, scope: Scope, name: str, warm_pool: int | None, concurrency: int = 2,
           forker: bool = True, handlers: Path = g.HANDLERS) -> Proc:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
    env.update({"PYTHONUNBUFFERED": "1", "XGRADER_QUEUE_URL": url, "XGRADER_QUEUE_NAMES": QUEUE,
                "XGRADER_QUEUE_USER": GRADER[0], "XGRADER_QUEUE_PASSWORD": GRADER[1],
                "XGRADER_HANDLERS": str(handlers), "XGRADER_SANDBOX": "bwrap", "XGRADER_CONCURRENCY": str(concurrency),
                "XGRADER_LOG_FORMAT": "json", "XGRADER_POLL_MAX_S": "0.2",
                "XDG_CACHE_HOME": str(work / "cache")})
    if warm_pool is not None:  # else `xgrader run`'s own default
        env["XGRADER_WARM_POOL"] = str(warm_pool)
    if not forker:
        env["XGRADER_FORKER"] = "0"
    proc = Proc(name, [sys.executable, "-m", "xgrader", "run"], env, work / f"{name}.log",
                preexec=scope.join if scope.active else None)
    proc.start()
    return proc


# -- floors with 2 workers ------------------------------------------------------------

def _floor_in_process(chunk: list[str]) -> list[float]:
    exprs, weights, expected = g.load_cases()
    grade = g.in_process_grader(exprs, weights, expected)
    return [grade("", code) for code in chunk]


def pytest_floor(ex: g.Exercise, codes: list[str]) -> float:
    """`python3 -m pytest` per submission, 2 at a time: subs/s."""
    from xgrader.config import Settings
    python = str(Settings().sandbox_python)
    graders = [g.pytest_process_grader(ex, python) for _ in range(2)]  # a folder each
    n = min(len(codes), 200)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: graders[i % 2]("", codes[i]), range(n)))
    return n / (time.perf_counter() - t0)


def floors(codes: list[str]) -> tuple[float, float]:
    """(in-process subs/s, python -I per submission subs/s), 2 workers each."""
    ctx = multiprocessing.get_context("fork")
    t0 = time.perf_counter()
    with ctx.Pool(2) as pool:
        pool.map(_floor_in_process, [codes[0::2], codes[1::2]])
    in_proc = len(codes) / (time.perf_counter() - t0)
    exprs, weights, expected = g.load_cases()
    from xgrader.config import Settings
    grade = g.process_grader(exprs, weights, expected, str(Settings().sandbox_python))
    n = min(len(codes), 600)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda c: grade("", c), codes[:n]))
    per_proc = n / (time.perf_counter() - t0)
    return in_proc, per_proc


# -- main ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000, help="submissions in the throughput phase (default 1000)")
    ap.add_argument("--latency-samples", type=int, default=40, help="idle submissions timed one by one (default 40)")
    ap.add_argument("--warm-pool", type=int, default=None,
                    help="XGRADER_WARM_POOL of the daemon (default: unset, `xgrader run`'s default: 1 with bwrap)")
    ap.add_argument("--concurrency", type=int, default=2,
                    help="XGRADER_CONCURRENCY of the daemon (default 2: the target's 2 workers)")
    ap.add_argument("--no-forker", dest="forker", action="store_false",
                    help="XGRADER_FORKER=0: the daemon's parent forks each job child itself")
    ap.add_argument("--timeout", type=float, default=1800, help="bound on the throughput phase in seconds")
    ap.add_argument("--kind", choices=("io", "pytest"), default="io",
                    help="io: the 11-case exercise (default); pytest: payload_handlers/is_prime")
    args = ap.parse_args(argv)

    ex = g.exercises()[args.kind]
    codes = [code for _name, code in ex.submissions]
    solution = ex.solution
    global PAYLOAD
    PAYLOAD = json.dumps({"grader": ex.assignment})
    work = Path(tempfile.mkdtemp(prefix="xgbench-tp-"))
    qport = free_port()
    direct = f"http://127.0.0.1:{qport}/xqueue/"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
    queue = Proc("queue", [sys.executable, "-m", "xgrader", "queue", "serve", "--host", "127.0.0.1",
                           "--port", str(qport), "--db", str(work / "queue.db"), "--queue", QUEUE,
                           "--user", ":".join(GRADER), "--user", ":".join(LMS), "--lease-timeout", "120"],
                 base_env, work / "queue.log")
    sink = Sink()
    observer = PullPost()
    proxy = FaultProxy(f"http://127.0.0.1:{qport}", observe=observer)
    scope = Scope()
    procs = [queue]
    out: dict[str, float] = {}
    try:
        queue.start()
        wait_http(direct + "status/")
        proxy.start()
        s = submitter(direct)

        # 1. idle latency, through the recording proxy
        d1 = daemon(work, proxy.url + "/xqueue/", scope, "daemon-latency", args.warm_pool, args.concurrency,
                    args.forker, ex.handlers)
        procs.append(d1)
        submit(s, direct, sink, "warmup", solution)
        if not sink.wait(["warmup"], 120):
            raise SystemExit(f"the daemon did not answer the warm-up submission; see {work}")
        e2e = []
        for i in range(args.latency_samples):
            key = f"lat{i}"
            time.sleep(0.3)  # idle: the daemon is back to polling
            t0 = time.monotonic()
            submit(s, direct, sink, key, codes[i % len(codes)])
            if not sink.wait([key], 60):
                raise SystemExit(f"no result for {key} within 60 s; see {work}")
            e2e.append((sink.arrived[key] - t0) * 1000)
        pp = sorted(observer.latencies_ms())
        d1.stop()

        # 2. throughput, the daemon straight on the queue
        d2 = daemon(work, direct, scope, "daemon-throughput", args.warm_pool, args.concurrency,
                    args.forker, ex.handlers)
        procs.append(d2)
        submit(s, direct, sink, "warmup2", solution)
        if not sink.wait(["warmup2"], 120):
            raise SystemExit(f"the daemon did not answer the warm-up submission; see {work}")
        keys = [f"t{i}" for i in range(args.count)]
        cpu0, q0, p0 = scope.cpu_seconds(), proc_cpu_s(queue.popen.pid), proc_cpu_s(d2.popen.pid)
        t0 = time.monotonic()
        rss_100 = None

        def fill() -> None:
            sess = submitter(direct)
            for i, key in enumerate(keys):
                submit(sess, direct, sink, key, codes[i % len(codes)])

        filler = threading.Thread(target=fill, daemon=True)
        filler.start()
        deadline = t0 + args.timeout
        while time.monotonic() < deadline:
            done = sink.count(keys)
            if rss_100 is None and done >= min(100, args.count):
                rss_100 = rss_mb(d2.popen.pid)
            if done >= len(keys):
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"only {sink.count(keys)}/{len(keys)} results in {args.timeout:g} s; see {work}")
        last = max(sink.arrived[k] for k in keys)
        elapsed = last - t0
        cpu1, q1, p1 = scope.cpu_seconds(), proc_cpu_s(queue.popen.pid), proc_cpu_s(d2.popen.pid)
        rss_end = rss_mb(d2.popen.pid)
        d2.stop()
        wrong = [k for i, k in enumerate(keys) if sink.scores.get(k) is None]

        # 3. floors, same machine, same moment
        floor_codes = [codes[i % len(codes)] for i in range(min(args.count, 2000))]
        if args.kind == "io":
            in_proc, per_proc = floors(floor_codes)
        else:
            in_proc, per_proc = None, pytest_floor(ex, floor_codes)
    finally:
        for p in procs:
            p.stop(grace=20)
        proxy.stop()
        sink.stop()
        scope.remove()

    rate = args.count / elapsed
    pool = "default (1)" if args.warm_pool is None else args.warm_pool
    what = ("novice submissions of an 11-case exercise" if args.kind == "io"
            else f"samples of {ex.handlers.name}/{ex.assignment} (pytest kind, 17 tests)")
    print(f"xgrader end to end: `xgrader queue serve` + `xgrader run` (concurrency {args.concurrency}, bwrap, fork "
          f"servers, warm pool {pool}, forker {'on' if args.forker else 'off'}), {len(codes)} {what}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print(f"{f'throughput (xgrader: {args.concurrency} workers; floors: 2)':<44} {'subs/s':>8} {'x xgrader':>10}")
    rows = [(f"xgrader ({args.count} submissions)", rate)]
    if in_proc is not None:
        rows.append(("floor: in-process checks", in_proc))
    rows.append(("floor: one python -I per submission" if args.kind == "io"
                 else "floor: one python3 -m pytest per submission", per_proc))
    rows.append(("peer (reference figure, two connections)", PEER["two connections"]))
    for name, r in rows:
        print(f"{name:<44} {r:>8.1f} {r / rate:>9.2f}x")
    if cpu0 is not None and cpu1 is not None:
        print(f"\ndaemon CPU per submission (daemon + children + sandboxes): {(cpu1 - cpu0) / args.count * 1000:.1f} ms")
    print(f"  of which the daemon's parent process (pull loop, fork, reaping): "
          f"{(p1 - p0) / args.count * 1000:.1f} ms")
    print(f"queue server CPU per submission (submit, pull, put, deliver): {(q1 - q0) / args.count * 1000:.1f} ms")
    print(f"\nidle latency over {len(pp)} submissions: pull-to-post p50 {statistics.median(pp):.1f} ms, "
          f"p95 {pp[int(0.95 * (len(pp) - 1))]:.1f} ms; submit-to-callback p50 {statistics.median(e2e):.1f} ms "
          f"(peer {PEER['idle submit-to-result ms']} ms; includes the 0.2 s max poll interval and LMS delivery)")
    print(f"daemon RSS: {rss_100:.1f} MB after {min(100, args.count)}, {rss_end:.1f} MB after {args.count}")
    if wrong:
        print(f"WARNING: {len(wrong)} results without a score: {wrong[:5]}")
    p50_target = TARGETS_P50_MS[args.kind]
    rate_line = (f"target >= {TARGET_RATE:g} subs/s: {'MET' if rate >= TARGET_RATE else 'MISSED'} ({rate:.1f}); "
                 if args.kind == "io" else "")
    print(f"\n{rate_line}target pull-to-post p50 <= {p50_target:g} ms: "
          f"{'MET' if statistics.median(pp) <= p50_target else 'MISSED'} ({statistics.median(pp):.1f})")
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
