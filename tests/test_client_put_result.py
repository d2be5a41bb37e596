"""put_result is sent again only when it provably never left: a server that
reads it and drops the connection, or answers 500, has it exactly once;
a refused connection and a proxy's 502/503/504 are retried. Both client
paths: the kept-alive fast path (plain http) and requests (credentials in
the URL keep the requests path). Also status/ by POST with a session."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.support.peers import DROP, envelope
from tests.support.queue import CountingHooks
from xgrader.client import QueueError, XQueueClient
from xgrader.config import Settings
from xgrader.wire import GraderReply

REPLY = GraderReply(correct=True, score=1, msg="<div>ok</div>")
HEADER = json.dumps({"submission_id": 1, "submission_key": "k" * 32})


def client_for(origin: str, hooks=None, fast: bool = True) -> XQueueClient:
    url = origin + "/xqueue/" if fast else origin.replace("http://", "http://u:p@") + "/xqueue/"
    client = XQueueClient(Settings(queue_url=url, queue_user="u", queue_password="p"), hooks=hooks)
    assert client._fast_ok is fast
    return client


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "requests"])
def test_a_put_result_the_server_read_then_dropped_is_not_sent_again(make_peer, fast):
    peer = make_peer(lambda seen: DROP if seen.path.endswith("/put_result/") else envelope(0, ""))
    client = client_for(peer.origin, fast=fast)
    with pytest.raises(requests.ConnectionError):
        client.put_result(HEADER, REPLY)
    assert len(peer.paths("/put_result/")) == 1


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "requests"])
def test_a_500_after_the_body_was_sent_is_maybe_processed(make_peer, fast):
    peer = make_peer(lambda seen: (500, {}, b"<h1>Server Error</h1>"))
    client = client_for(peer.origin, fast=fast)
    with pytest.raises(QueueError, match="HTTP 500") as exc:
        client.put_result(HEADER, REPLY)
    assert exc.value.kind == "http_5xx" and len(peer.paths("/put_result/")) == 1


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_proxy_gateway_answer_is_sent_again(make_peer, status):
    answers = iter([(status, {}, b"bad gateway")])
    peer = make_peer(lambda seen: next(answers, None) or envelope(0, ""))
    assert client_for(peer.origin).put_result(HEADER, REPLY).accepted
    assert len(peer.paths("/put_result/")) == 2


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "requests"])
def test_a_refused_connection_is_retried(fast):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hooks = CountingHooks()
    client = client_for(f"http://127.0.0.1:{port}", hooks, fast=fast)
    with pytest.raises(requests.ConnectionError):
        client.put_result(HEADER, REPLY)
    assert hooks.errors.count("connect") == 4   # nothing left: every attempt was safe


def test_a_stale_kept_alive_socket_is_replaced_before_writing():
    """The server closed the idle kept-alive connection without saying so
    (an idle timeout): the client sees it before writing, and the put goes
    out once, on a new connection."""
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = srv.accept()
            with conn:
                f = conn.makefile("rb")
                line = f.readline().decode()
                length = 0
                while (h := f.readline()) not in (b"\r\n", b""):
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":")[1])
                f.read(length)
                seen.append(line.split()[1])
                body = json.dumps({"return_code": 0, "content": 0}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                f.close()   # then close, without a Connection: close header

    threading.Thread(target=serve, daemon=True).start()
    try:
        client = client_for(f"http://127.0.0.1:{srv.getsockname()[1]}")
        assert client.get_queuelen("q") == 0
        end = time.monotonic() + 5
        while not _dropped_by_peer(client._sock) and time.monotonic() < end:
            time.sleep(0.01)
        assert client.put_result(HEADER, REPLY).accepted
        assert [p.split("?")[0] for p in seen] == ["/xqueue/get_queuelen/", "/xqueue/put_result/"]
    finally:
        srv.close()


def _dropped_by_peer(sock) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def test_status_is_a_post_with_the_session(make_peer):
    def answer(seen):
        if seen.path.endswith("/login/"):
            if seen.method == "GET":
                return 200, {"Set-Cookie": "csrftoken=tok; Path=/"}, json.dumps(
                    {"return_code": 0, "content": ""}).encode()
            return 200, {"Set-Cookie": "sessionid=s1; Path=/"}, json.dumps(
                {"return_code": 0, "content": "Logged in"}).encode()
        if seen.path.endswith("/status/"):
            if seen.method != "POST":
                return 405, {}, b'{"detail": "Method not allowed."}'
            if "sessionid=s1" not in seen.headers.get("cookie", ""):
                return 403, {}, b'{"detail": "Authentication credentials were not provided."}'
            return 200, {}, json.dumps({"return_code": 0, "content": "OK"}).encode()
        return 404, {}, b"<h1>Not Found</h1>"

    peer = make_peer(answer)
    client = client_for(peer.origin)
    assert client.status() is True
    status_calls = [(s.method, s.headers.get("x-csrftoken")) for s in peer.paths("/status/")]
    assert status_calls[-1] == ("POST", "tok")   # logged in once, then the POST with CSRF
    assert client.flavor == "edx-submissions"
