"""What `xgrader demo` drives: the bundled queue server and the daemon as
subprocesses, an LMS-side callback receiver, sample submissions, a results
table. Loopback only; every wait is bounded."""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import requests

from xgrader.extras import missing_for_kind

TEXT_SUFFIXES = {".py", ".txt", ".js", ".c", ".java", ".md", ".sql", ".r", ".sh", ""}
QUEUE = "demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sample:
    key: str                      # lms_key: how the callback is matched
    assignment: str
    name: str
    student_response: str = ""
    files: dict[str, bytes] = field(default_factory=dict)


def find_samples(handlers: Path, skipped: list[str] | None = None) -> list[Sample]:
    """Every `<assignment>/samples/<sample>` under the handlers root. A text
    file is typed code (student_response); a directory or a binary/zip/ipynb
    file is uploaded as files. An assignment whose kind needs an extra that
    is not installed is left out, with its reason appended to `skipped`."""
    samples: list[Sample] = []
    for assignment in sorted(p for p in handlers.iterdir() if (p / "samples").is_dir()):
        missing = missing_for_kind(_kind_of(assignment))
        if missing:
            if skipped is not None:
                skipped.append(f"{assignment.name}: {missing}")
            continue
        for path in sorted((assignment / "samples").iterdir()):
            if path.name.startswith(".") or path.name == "__pycache__":
                continue
            key = f"{assignment.name}--{path.name}--{secrets.token_hex(4)}"
            sample = Sample(key=key, assignment=assignment.name, name=path.name)
            if path.is_dir():
                sample.files = {f.name: f.read_bytes() for f in sorted(path.iterdir()) if f.is_file()}
            elif path.suffix.lower() in TEXT_SUFFIXES:
                try:
                    sample.student_response = path.read_text()
                except UnicodeDecodeError:
                    sample.files = {path.name: path.read_bytes()}
            else:
                sample.files = {path.name: path.read_bytes()}
            samples.append(sample)
    return samples


def _kind_of(assignment: Path) -> str:
    try:
        return str(tomllib.loads((assignment / "assignment.toml").read_text(encoding="utf-8")).get("kind", ""))
    except (OSError, ValueError):
        return ""  # the grader will say what is wrong with it


class CallbackReceiver:
    """The LMS side: the queue server posts {xqueue_header, xqueue_body} here."""

    def __init__(self) -> None:
        self.results: dict[str, list[dict]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                try:
                    body = json.loads(form.get("xqueue_body") or raw).copy()
                    if "xqueue_body" in body and isinstance(body["xqueue_body"], str):
                        body = json.loads(body["xqueue_body"])
                except ValueError:
                    body = {"correct": None, "score": 0, "msg": raw[:200]}
                key = self.path.rsplit("/", 1)[-1]
                with receiver.lock:
                    receiver.results.setdefault(key, []).append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def submit(session: requests.Session, queue_url: str, sample: Sample, callback_url: str, queue: str = QUEUE) -> None:
    header = {"lms_callback_url": callback_url + sample.key, "lms_key": sample.key, "queue_name": queue}
    body = {
        "student_response": sample.student_response,
        "grader_payload": json.dumps({"grader": sample.assignment}),
        "student_info": json.dumps({"anonymous_student_id": f"demo-{sample.name}",
                                    "submission_time": time.strftime("%Y%m%d%H%M%S", time.gmtime()),
                                    "random_seed": 1}),
    }
    data = {"xqueue_header": json.dumps(header), "xqueue_body": json.dumps(body)}
    files = {name: (name, content) for name, content in sample.files.items()} or None
    resp = session.post(queue_url + "submit/", data=data, files=files, timeout=30)
    reply = json.loads(resp.text)
    if reply.get("return_code") != 0:
        raise RuntimeError(f"submit {sample.key} failed: {reply.get('content')}")


def login(session: requests.Session, queue_url: str, user: str, password: str) -> None:
    session.get(queue_url + "login/", timeout=10)  # CSRF cookie on edx-submissions
    token = session.cookies.get("csrftoken")
    headers = {"X-CSRFToken": token, "Referer": queue_url} if token else {}
    resp = session.post(queue_url + "login/", data={"username": user, "password": password},
                        headers=headers, timeout=10)
    if json.loads(resp.text).get("return_code") != 0:
        raise RuntimeError(f"login to the queue failed: {resp.text[:200]}")


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the queue server exited with {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def msg_first_line(msg: str) -> str:
    """The first line of the feedback, as text."""
    text = re.sub(r"<(br|/p|/div|/li|/h\d|/tr|/pre)[^>]*>", "\n", msg or "", flags=re.I)
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    for line in text.splitlines():
        if line.strip():
            return " ".join(line.split())[:90]
    return ""


def verdict(body: dict) -> str:
    if body.get("correct") is None:
        return "could not grade"
    return "correct" if body.get("correct") else "incorrect"


def results_table(samples: list[Sample], results: dict[str, list[dict]], max_scores: dict[str, float]) -> str:
    rows = [("submission", "assignment", "score", "verdict", "feedback")]
    for s in samples:
        got = results.get(s.key)
        if not got:
            rows.append((s.name, s.assignment, "-", "NO RESULT", ""))
            continue
        body = got[0]
        score = body.get("score", 0)
        max_s = max_scores.get(s.assignment)
        score_txt = f"{score:g}/{max_s:g}" if max_s else f"{score:g}"
        extra = f" (x{len(got)})" if len(got) > 1 else ""
        rows.append((s.name, s.assignment, score_txt, verdict(body) + extra, msg_first_line(body.get("msg", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 8)
    return "\n".join(lines)


def delivered_results(db: Path) -> dict[str, list[dict]]:
    """lms_key -> [result] of what the queue delivered (kept mode: its own LMS sink)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT lms_key, result FROM submissions WHERE delivery='delivered'").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return {}
    out: dict[str, list[dict]] = {}
    for key, result in rows:
        try:
            out[key] = [json.loads(result)]
        except (TypeError, ValueError):
            out[key] = [{"correct": None, "score": 0, "msg": str(result)[:200]}]
    return out


def max_score_of(body: dict) -> float | None:
    m = re.search(r"(\d+(?:\.\d+)?)\s*(?:/|out of|of)\s*(\d+(?:\.\d+)?)", msg_first_line(body.get("msg", "")))
    return float(m.group(2)) if m else None


@dataclass
class DemoRun:
    handlers: Path
    workdir: Path
    timeout_s: float = 180.0
    keep: bool = False
    sandbox: str = "bwrap"
    out: Any = sys.stdout
    procs: list[subprocess.Popen] = field(default_factory=list)
    ledger_url: str | None = None       # the attempt ledger; default: ledger.db in the workdir
    metrics_port: int | None = None

    @property
    def ledger(self) -> str:
        return self.ledger_url or f"sqlite:///{self.workdir / 'ledger.db'}"

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def start_queue(self, port: int, password: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "xgrader", "queue", "serve", "--port", str(port),
               "--db", str(self.workdir / "queue.db"), "--queue", QUEUE, "--user", f"xgrader:{password}",
               "--ledger", self.ledger]
        log = open(self.workdir / "queue.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_daemon(self, queue_url: str, password: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
        env.update({
            "XGRADER_QUEUE_URL": queue_url, "XGRADER_QUEUE_NAMES": QUEUE,
            "XGRADER_QUEUE_USER": "xgrader", "XGRADER_QUEUE_PASSWORD": password,
            "XGRADER_HANDLERS": str(self.handlers), "XGRADER_SANDBOX": self.sandbox,
            "XGRADER_POLL_MAX_S": "0.5", "XGRADER_LOG_FORMAT": "json",
            "XGRADER_SHUTDOWN_GRACE_S": "20", "XGRADER_LEDGER__URL": self.ledger,
        })
        if self.metrics_port:
            env["XGRADER_METRICS_PORT"] = str(self.metrics_port)
        log = open(self.workdir / "daemon.log", "wb")
        cmd = [sys.executable, "-m", "xgrader", "run"]
        if self.sandbox == "unsafe":
            cmd.append("--unsafe-no-sandbox")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def write_config(self, queue_url: str, password: str) -> Path:
        """The kept stack's settings, for `xgrader history|regrade --config`."""
        (self.workdir / "password").write_text(password)
        os.chmod(self.workdir / "password", 0o600)
        config = self.workdir / "xgrader.toml"
        config.write_text(
            f"queue_url = {json.dumps(queue_url)}\nqueue_names = [{json.dumps(QUEUE)}]\n"
            f"queue_user = \"xgrader\"\nqueue_password_file = {json.dumps(str(self.workdir / 'password'))}\n"
            f"handlers = {json.dumps(str(self.handlers))}\nsandbox = {json.dumps(self.sandbox)}\n\n"
            f"[ledger]\nurl = {json.dumps(self.ledger)}\n")
        return config

    def stop(self, proc: subprocess.Popen, grace: float = 25.0) -> int | None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def run(self) -> int:
        skipped: list[str] = []
        samples = find_samples(self.handlers, skipped)
        for reason in skipped:
            self.say(f"skipped {reason}")
        if not samples:
            self.say(f"no samples found under {self.handlers}/*/samples/")
            return 1
        password = secrets.token_urlsafe(16)  # one-off; never printed
        port = free_port()
        queue_url = f"http://127.0.0.1:{port}/xqueue/"
        receiver = CallbackReceiver()
        if self.keep:
            # What is left running must still have an LMS to deliver to (a
            # regrade delivers again): the queue server's built-in sink.
            receiver.url = f"{queue_url}lms-callback/"
        queue = daemon = None
        try:
            queue = self.start_queue(port, password)
            wait_http(queue_url + "status/", 30, queue)
            daemon = self.start_daemon(queue_url, password)
            session = requests.Session()
            login(session, queue_url, "xgrader", password)
            self.say(f"queue server on {queue_url}, daemon pid {daemon.pid}, "
                     f"submitting {len(samples)} samples from {self.handlers}")
            for s in samples:
                submit(session, queue_url, s, receiver.url)
            end = time.monotonic() + self.timeout_s
            def results_now() -> dict[str, list[dict]]:
                if self.keep:
                    return delivered_results(self.workdir / "queue.db")
                with receiver.lock:
                    return {k: list(v) for k, v in receiver.results.items()}

            while len(results_now()) < len(samples) and time.monotonic() < end:
                if daemon.poll() is not None:
                    self.say(f"the daemon exited early with {daemon.returncode}; see {self.workdir}/daemon.log")
                    break
                time.sleep(0.1)
            time.sleep(0.3)  # a duplicate delivery would show up as (x2)
            results = results_now()
            max_scores: dict[str, float] = {}
            for s in samples:
                for body in results.get(s.key, []):
                    m = max_score_of(body)
                    if m:
                        max_scores.setdefault(s.assignment, m)
            self.say("")
            self.say(results_table(samples, results, max_scores))
            missing = [s.key for s in samples if not results.get(s.key)]
            dupes = [s.key for s in samples if len(results.get(s.key, [])) > 1]
            self.say("")
            self.say(f"{len(samples) - len(missing)}/{len(samples)} results delivered"
                     + (f", {len(dupes)} delivered more than once" if dupes else ""))
            if self.keep:
                config = self.write_config(queue_url, password)
                self.say(f"queue server (pid {queue.pid}) and daemon (pid {daemon.pid}) left running; "
                         f"stop them with: kill {queue.pid} {daemon.pid}")
                self.say(f"dashboard: {queue_url}dashboard/ (user xgrader, password in {self.workdir}/password)")
                self.say(f"settings for history/regrade: --config {config}  (ledger {self.ledger})")
                queue = daemon = None
                return 1 if missing or dupes else 0
            daemon_code = self.stop(daemon)
            if daemon_code not in (0, None):
                self.say(f"daemon exited with {daemon_code}; see {self.workdir}/daemon.log")
            return 1 if missing or dupes or daemon_code not in (0, None) else 0
        finally:
            receiver.stop()
            for proc in (daemon, queue):
                if proc is not None:
                    self.stop(proc)
