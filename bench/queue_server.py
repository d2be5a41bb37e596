"""Pull+put pairs per second against the bundled queue server on loopback.

    python -m bench.queue_server                  # 2,000 pairs per row
    python -m bench.queue_server --pairs 5000 --threads 1 2 4
    python -m bench.queue_server --baseline ../xgrader-main --rounds 2   # A/B against another checkout

Starts `xgrader queue serve` (a subprocess, its own SQLite file), fills the
queue through the LMS side (`submit/`, timed too), then drains it with
get_submission + put_result pairs:

- ``xgrader client``: :class:`xgrader.client.XQueueClient`, what the daemon uses
  (CSRF-aware login, envelopes parsed, retries armed);
- ``raw requests``: a bare ``requests.Session`` per thread (the floor of the
  HTTP client side).

Each row reports pairs/s and the server's CPU per pair (from /proc). The
server delivers every result to an LMS callback sink (a separate process)
during the run, as in production. Target: >= 500 pairs/s.

With ``--baseline DIR`` the server is also run from another checkout (say a
`git worktree` of main): the two alternate round by round (A B A B...) in
this one run, with the same clients, and each row shows both figures and
their ratio (median over the rounds), so a busy machine affects both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import requests

REPO = Path(__file__).resolve().parent.parent
QUEUE = "bench"
GRADER = ("grader", "grader-pass")
LMS = ("lms", "lms-pass")
TARGET = 500.0
REPLY = json.dumps({"correct": True, "score": 1, "msg": "<p>ok</p>"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    """utime+stime of a live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"OK")
s = ThreadingHTTPServer(("127.0.0.1", 0), H); s.daemon_threads = True
print(s.server_address[1], flush=True)
s.serve_forever()
"""


class Sink:
    """The LMS: a separate process answering every callback with 200 (so
    deliveries cost the queue server what they cost in production)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", SINK], stdout=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}/cb/"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


class Server:
    def __init__(self, work: Path, tree: Path = REPO) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/xqueue/"
        self.log = open(work / "queue.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xgrader", "queue", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--db", str(work / "queue.db"), "--queue", QUEUE, "--user", ":".join(GRADER),
             "--user", ":".join(LMS), "--lease-timeout", "600"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tree,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}, "PYTHONPATH": str(tree)})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.base + "status/", timeout=1)
                return
            except requests.RequestException:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"queue server exited {self.proc.returncode}; see {work / 'queue.log'}")
                time.sleep(0.1)
        raise RuntimeError("queue server did not come up in 30 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def fill(server: Server, sink: Sink | None, n: int, threads: int = 4) -> float:
    """Submit n like the LMS; returns submissions/s."""
    body = json.dumps({"student_response": "def f():\n    return 1\n", "grader_payload": '{"grader": "x"}',
                       "student_info": "{}"})
    counter = iter(range(n))
    lock = threading.Lock()

    def work() -> None:
        s = requests.Session()
        s.post(server.base + "login/", data={"username": LMS[0], "password": LMS[1]}, timeout=10)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            # Without a sink the URL scheme is one the server refuses to post to.
            callback = f"{sink.url}{i}" if sink else f"none:{i}"
            header = {"lms_callback_url": callback, "lms_key": str(i), "queue_name": QUEUE}
            r = s.post(server.base + "submit/", data={"xqueue_header": json.dumps(header), "xqueue_body": body},
                       timeout=10)
            assert r.json()["return_code"] == 0, r.text

    return _timed(work, threads, n)


def _timed(work: Callable[[], None], threads: int, n: int) -> float:
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    ts = [threading.Thread(target=guarded) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return n / dt


def drain_raw(server: Server, n: int, threads: int) -> float:
    left = [n]
    lock = threading.Lock()

    def work() -> None:
        s = requests.Session()
        s.post(server.base + "login/", data={"username": GRADER[0], "password": GRADER[1]}, timeout=10)
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            r = s.get(server.base + "get_submission/", params={"queue_name": QUEUE}, timeout=10).json()
            assert r["return_code"] == 0, r
            header = json.loads(r["content"])["xqueue_header"]
            p = s.post(server.base + "put_result/", data={"xqueue_header": header, "xqueue_body": REPLY},
                       timeout=10).json()
            assert p["return_code"] == 0, p

    return _timed(work, threads, n)


def drain_client(server: Server, n: int, threads: int) -> float:
    from xgrader.client import XQueueClient
    from xgrader.config import Settings
    from xgrader.wire import GraderReply, parse_submission

    settings = Settings(queue_url=server.base, queue_names=[QUEUE], queue_user=GRADER[0],
                        queue_password=GRADER[1])
    reply = GraderReply(correct=True, score=1, msg="<p>ok</p>")
    left = [n]
    lock = threading.Lock()

    def work() -> None:
        client = XQueueClient(settings)
        client.login()
        try:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                content = client.get_submission(QUEUE)
                assert content is not None, "queue ran dry"
                sub = parse_submission(content)
                out = client.put_result(sub.header_raw, reply)
                assert out.accepted, out
        finally:
            client.close()

    return _timed(work, threads, n)


def measure(tree: Path, pairs: int, threads: list[int], delivery: bool) -> list[tuple[str, float, float]]:
    """One server from `tree`: (row, pairs/s, server CPU ms per pair), the
    LMS side's submit/ first."""
    work = Path(tempfile.mkdtemp(prefix="xgbench-queue-"))
    server = Server(work, tree)
    sink = Sink() if delivery else None
    rows = []
    try:
        total = pairs * len(threads) * 2
        c0 = proc_cpu_s(server.proc.pid)
        rate = fill(server, sink, total)
        rows.append(("submit/ (LMS side), 4 conn", rate, (proc_cpu_s(server.proc.pid) - c0) / total * 1000))
        for name, drain in (("raw requests", drain_raw), ("xgrader client", drain_client)):
            for n in threads:
                c0 = proc_cpu_s(server.proc.pid)
                rate = drain(server, pairs, n)
                rows.append((f"{name}, {n} conn", rate, (proc_cpu_s(server.proc.pid) - c0) / pairs * 1000))
    finally:
        server.stop()
        if sink:
            sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2000, help="pull+put pairs per row (default 2000)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4],
                    help="concurrent connections per row (default 1 2 4)")
    ap.add_argument("--no-delivery", action="store_true",
                    help="callbacks the server will not post (isolates the pull/put cost from LMS delivery)")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="also run the server from this checkout, alternating with this one")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds per server (default 1, or 2 with --baseline)")
    args = ap.parse_args(argv)
    import logging

    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    trees = [("baseline", args.baseline.resolve()), ("this", REPO)] if args.baseline else [("this", REPO)]
    rounds = args.rounds or (2 if args.baseline else 1)
    results: dict[str, list[list[tuple[str, float, float]]]] = {name: [] for name, _ in trees}
    loads = []
    for _ in range(rounds):
        for name, tree in trees:  # A B A B: both see the same machine
            results[name].append(measure(tree, args.pairs, args.threads, not args.no_delivery))
            loads.append(os.getloadavg()[0])
    print(f"bundled queue server on loopback{' (no LMS delivery)' if args.no_delivery else ''}, "
          f"{rounds} round(s), load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    if args.baseline:
        print(f"baseline: {args.baseline}")
    names = [row for row, _, _ in results["this"][0]]
    head = f"{'row':<28}"
    for name, _ in trees:
        head += f" {name + ' pairs/s':>22} {name + ' CPU ms/pair':>20}"
    head += f" {'ratio':>6}" if args.baseline else f" {'x target':>9}"
    print(head)
    for i, row in enumerate(names):
        line = f"{row:<28}"
        for name, _ in trees:
            rates = [r[i][1] for r in results[name]]
            cpus = [r[i][2] for r in results[name]]
            line += f" {' '.join(f'{x:.0f}' for x in rates):>22} {statistics.median(cpus):>20.2f}"
        mine = statistics.median(r[i][1] for r in results["this"])
        if args.baseline:
            line += f" {mine / statistics.median(r[i][1] for r in results['baseline']):>6.2f}"
        elif not row.startswith("submit"):
            line += f" {mine / TARGET:>8.2f}x"
        print(line)
    best = max(statistics.median(r[i][1] for r in results["this"]) for i, row in enumerate(names)
               if not row.startswith("submit"))
    print(f"\ntarget >= {TARGET:g} pull+put pairs/s: {'MET' if best >= TARGET else 'MISSED'} (best median {best:.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
