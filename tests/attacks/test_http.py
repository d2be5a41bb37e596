"""HTTP parsing attacks on the bundled servers (the queue server, push mode,
the metrics endpoint), over raw sockets on loopback: ambiguous framing must
get a 400 and end the connection, so a request hidden behind it is never
answered (no desync); pipelined and slow clients are served correctly; the
login form never redirects to another site."""

from __future__ import annotations

import re
import socket
import threading
import time
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.support.queue import LMS, QueueHarness
from xgrader.config import Settings
from xgrader.metrics import MetricsHooks, start_metrics_server
from xgrader.push import PushServer
from xgrader.backends import make_backend


class Target:
    def __init__(self, name: str, port: int, path: str) -> None:
        self.name, self.port, self.path = name, port, path  # path: a GET the server answers 200

    def request(self, extra: str = "", path: str | None = None) -> bytes:
        return f"GET {path or self.path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


@pytest.fixture(scope="module")
def queue_target(tmp_path_factory):
    harness = QueueHarness(tmp_path_factory.mktemp("http-queue"))
    yield harness, Target("queue", harness.server.port, "/xqueue/status/")
    harness.stop()


@pytest.fixture(scope="module")
def push_target(tmp_path_factory):
    settings = Settings(handlers=tmp_path_factory.mktemp("no-handlers"), sandbox="bwrap", concurrency=1)
    backend = make_backend(settings)
    server = PushServer(settings, backend)
    ready = threading.Event()
    thread = threading.Thread(target=server.serve, args=("127.0.0.1", 0, ready), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield Target("push", server.port, "/healthz")
    server.shutdown()
    thread.join(15)
    backend.close()


@pytest.fixture(scope="module")
def metrics_target():
    hooks = MetricsHooks()
    srv = start_metrics_server(Settings(metrics_port=0), hooks, hooks.readiness)
    yield Target("metrics", srv.port, "/metrics")
    srv.stop()


@pytest.fixture(params=["queue", "push", "metrics"])
def target(request) -> Target:
    if request.param == "queue":
        return request.getfixturevalue("queue_target")[1]
    return request.getfixturevalue(f"{request.param}_target")


def exchange(port: int, raw: bytes, timeout: float = 5.0) -> tuple[list[int], bytes]:
    """Send raw bytes; read until the server closes: (status codes, all bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except socket.timeout:
            raise AssertionError(f"the server kept the connection open after {data[:300]!r}") from None
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)], data


def hidden(target: Target) -> bytes:
    """A request an ambiguous length would hide in the body: it must never be answered."""
    return target.request("Connection: close\r\n", path=target.path + "?smuggled=1")


def post(target: Target, headers: str, body: bytes = b"") -> bytes:
    return f"POST {target.path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body


AMBIGUOUS = {
    # {n}: the length of the hidden request, which a server reading the
    # header as Content-Length takes for the body (and so never answers).
    "underscore Content_Length": ("Content_Length: {n}\r\n", b""),
    "whitespace before the colon": ("Content-Length : {n}\r\n", b""),
    "tab before the colon": ("Content-Length\t: {n}\r\n", b""),
    "underscore in another name": ("X_Forwarded_For: 127.0.0.1\r\nContent-Length: 0\r\n", b""),
    "duplicate Content-Length": ("Content-Length: 2\r\nContent-Length: 2\r\n", b"ab"),
    "conflicting Content-Length": ("Content-Length: 2\r\nContent-Length: 0\r\n", b"ab"),
    "listed Content-Length": ("Content-Length: 2, 2\r\n", b"ab"),
    "signed Content-Length +": ("Content-Length: +2\r\n", b"ab"),
    "signed Content-Length -": ("Content-Length: -2\r\n", b"ab"),
    "Content-Length 1_0": ("Content-Length: 1_0\r\n", b"0123456789"),
    "hex Content-Length": ("Content-Length: 0x2\r\n", b"ab"),
    "Content-Length and Transfer-Encoding": ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                                             b"0\r\n\r\n"),
    "Transfer-Encoding and Content-Length": ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                                             b"0\r\n\r\n"),
    "chunk size 0x": ("Transfer-Encoding: chunked\r\n", b"0x2\r\nab\r\n0\r\n\r\n"),
    "chunk size +": ("Transfer-Encoding: chunked\r\n", b"+2\r\nab\r\n0\r\n\r\n"),
    "chunk size 1_0": ("Transfer-Encoding: chunked\r\n", b"1_0\r\n0123456789\r\n0\r\n\r\n"),
    "unknown transfer coding": ("Transfer-Encoding: xchunked\r\n", b""),
    "header line without a colon": ("Content-Length 0\r\n", b""),
    "bare LF in a header": ("X-A: 1\nContent-Length: 0\r\n", b""),
    "NUL in a value": ("X-A: a\x00b\r\n", b""),
}


@pytest.mark.parametrize("case", AMBIGUOUS, ids=list(AMBIGUOUS))
def test_ambiguous_framing_is_a_400_and_nothing_behind_it_is_answered(target, case):
    headers, body = AMBIGUOUS[case]
    tail = hidden(target)
    codes, data = exchange(target.port, post(target, headers.format(n=len(tail)), body) + tail)
    assert codes and codes[0] in (400, 501), (case, data[:300])  # 501: a coding it does not implement
    assert codes == codes[:1], f"{case}: the hidden request was answered: {data[:600]!r}"


def test_pipelined_requests_are_answered_in_order_and_unread_bodies_skipped(target):
    # The body is not read by any of the apps: the server must skip it, not
    # parse it as a request.
    evil = b"GET /evil HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = (post(target, f"Content-Length: {len(evil)}\r\n", evil) + target.request()
           + target.request(path="/nope-404") + target.request("Connection: close\r\n"))
    codes, data = exchange(target.port, raw)
    assert len(codes) == 4 and codes[1] == 200 and codes[2] in (404, 405) and codes[3] == 200, data[:800]
    assert b"/evil" not in data


def test_slow_clients_hold_no_worker_and_the_server_stays_up(target):
    """More half-sent requests (one byte at a time, never finished) than the
    server has worker threads: an ordinary request is still answered at
    once, and so is every slow client that finally completes."""
    slow = []
    try:
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", target.port), timeout=5)
            s.sendall(b"G")
            slow.append(s)
        for s in slow:
            s.sendall(b"ET ")
        started = time.monotonic()
        codes, _ = exchange(target.port, target.request("Connection: close\r\n"))
        assert codes == [200] and time.monotonic() - started < 2.0
        for s in slow:
            s.sendall(f"{target.path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        for s in slow:
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for s in slow:
            s.close()


def browser_target(base: str, location: str) -> str:
    """Where a browser goes for a Location header: it drops tabs and
    newlines and leading or trailing spaces and controls, and reads a
    backslash as a slash (WHATWG URL), then resolves against the page."""
    cleaned = re.sub(r"[\t\n\r]", "", location).strip("\x00- ").replace("\\", "/")
    return urljoin(base, cleaned)


@pytest.mark.parametrize("next_path", [
    "/\t/evil.example/", "//evil.example/", "/\\evil.example/", "\\\\evil.example", "/\\/evil.example/",
    "/.//evil.example/", "/x/..//evil.example/", "http://evil.example/", "https:evil.example",
    " //evil.example/", "/\r\n/evil.example/", "/\x00/evil.example/", "/\u3000/evil.example/",
    "/%zz//evil", "javascript:alert(1)",
])
def test_login_never_redirects_to_another_site(queue_target, next_path):
    harness, _ = queue_target
    r = requests.post(harness.url + "login/", data={"username": LMS[0], "password": LMS[1], "next": next_path},
                      allow_redirects=False, timeout=5)
    if r.is_redirect:
        landing = urlsplit(browser_target(harness.url + "login/", r.headers["Location"]))
        assert (landing.scheme, landing.netloc) == ("http", urlsplit(harness.url).netloc), (next_path, landing)
    assert r.status_code == 302 and r.headers["Location"] == "/"  # refused: the dashboard instead


def test_login_redirects_back_to_a_same_origin_path(queue_target):
    harness, _ = queue_target
    for path in ("/", "/xqueue/", "/xqueue/?page=2", "/a/../xqueue/"):
        r = requests.post(harness.url + "login/", data={"username": LMS[0], "password": LMS[1], "next": path},
                          allow_redirects=False, timeout=5)
        assert (r.status_code, r.headers["Location"]) == (302, path)
