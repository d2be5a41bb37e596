"""The submissions dashboard at 10,000 submissions: how long the list page
takes (first page, a filter by assignment, by student, by result, the last
page) and a submission's page, over real HTTP on the bundled queue server,
against a baseline measured in the same run: the server's trivial
`/xqueue/status/` endpoint (what any request costs) and the old read-only
dashboard at `/` (the latest 200 rows).

    python -m bench.dashboard [--submissions 10000] [--requests 30]

Also prints the one-time cost of indexing the assignment and student of
every submission (the first list view of a database that never had one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import requests

from xgrader.queue_server import QueueServer, QueueServerConfig

ASSIGNMENTS = ["is_prime", "sum_digits", "grade_stats", "word_freq", "temperature_notebook"]


def fill(server: QueueServer, n: int) -> None:
    store = server.store
    for i in range(n):
        body = json.dumps({"student_response": f"def f():\n    return {i}\n",
                           "grader_payload": json.dumps({"grader": ASSIGNMENTS[i % len(ASSIGNMENTS)]}),
                           "student_info": json.dumps({"anonymous_student_id": f"student-{i % 800}"})})
        store.submit("q", f"http://127.0.0.1:9/cb/{i}", f"k{i}", "{}", body)
        if i % 10 != 9:   # most answered, some still waiting
            pulled = store.pull("q", 60)
            msg = "<div class='xgrader-feedback'><p>" + ("x" * 400) + "</p></div>"
            store.put_result(pulled.id, pulled.key, json.dumps({"correct": i % 3 == 0, "score": i % 11, "msg": msg}))


def timed(session: requests.Session, url: str, n: int, expect: str = "", **params) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        reply = session.get(url, params=params, timeout=30)
        samples.append((time.perf_counter() - started) * 1000)
        assert reply.status_code == 200 and expect in reply.text, (reply.status_code, reply.text[:300])
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xgrader-bench-dash-"))
    server = QueueServer(QueueServerConfig(port=0, db=tmp / "q.db", queues=["q"], users={"u": "pw"})).start()
    try:
        started = time.perf_counter()
        fill(server, args.submissions)
        print(f"filled {args.submissions} submissions in {time.perf_counter() - started:.1f}s")
        s = requests.Session()
        s.post(server.url + "login/", data={"username": "u", "password": "pw"}, timeout=10)
        started = time.perf_counter()
        indexed = server.app.pages.browser.refresh_index()
        print(f"first view: indexed {indexed} submissions in {(time.perf_counter() - started) * 1000:.0f} ms (once)")
        base, _ = timed(s, server.url + "status/", args.requests)
        old, old90 = timed(s, server.url.rsplit("xqueue/", 1)[0], args.requests)
        rows = [
            ("status/ (baseline)", base, base),
            ("old dashboard / (latest 200)", old, old90),
            ("list, first page", *timed(s, server.url + "dashboard/", args.requests, "id='submissions'")),
            ("list, assignment filter", *timed(s, server.url + "dashboard/", args.requests, assignment="word_freq")),
            ("list, student filter", *timed(s, server.url + "dashboard/", args.requests, student="student-17")),
            ("list, incorrect results", *timed(s, server.url + "dashboard/", args.requests, result="incorrect")),
            ("list, last page", *timed(s, server.url + "dashboard/", args.requests, page=str(args.submissions // 50))),
            ("a submission's page", *timed(s, server.url + f"submission/{args.submissions // 2}/", args.requests,
                                                 f"Submission #{args.submissions // 2}")),
        ]
        print(f"\n{args.submissions} submissions, {args.requests} requests each, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f} (others' work included)")
        print(f"{'request':<32} {'p50 ms':>8} {'p90 ms':>8} {'x status/':>10}")
        for name, p50, p90 in rows:
            print(f"{name:<32} {p50:8.1f} {p90:8.1f} {p50 / base:10.1f}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
