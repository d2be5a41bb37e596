"""XQueueClient against the bundled queue server over real HTTP: login and
CSRF, re-login after session expiry, both server flavours (legacy envelopes,
edx-submissions status codes), bounded retries, put_result never resent
once it may have been processed, files."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from tests.support.queue import CountingHooks, make_client
from xgrader.client import FilesPayloadError, LoginError, QueueError
from xgrader.wire import GraderReply, parse_submission

REPLY = GraderReply(correct=True, score=1, msg="<div>ok</div>")


class Faults:
    """WSGI middleware in front of the real app: answers the next requests
    whose path ends with `endpoint` with `status` (before the app sees them),
    or passes them through and then answers `status` (after), and records
    every request's headers."""

    def __init__(self, app) -> None:
        self.app = app
        self.plan: list[tuple[str, int, str]] = []   # (endpoint, status, when)
        self.seen: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        with self.lock:
            self.seen.append((method, path, headers))
            hit = next((p for p in self.plan if path.endswith(p[0])), None)
            if hit:
                self.plan.remove(hit)
        if hit and hit[2] == "after":
            body = b"".join(self.app(environ, lambda *a, **k: None))
            del body
        if hit:
            start_response(f"{hit[1]} Injected", [("Content-Type", "text/html")])
            return [b"<html>injected</html>"]
        return self.app(environ, start_response)

    def count(self, endpoint: str) -> int:
        with self.lock:
            return sum(1 for _, p, _ in self.seen if p.endswith(endpoint))


@pytest.fixture
def faults(queue):
    f = Faults(queue.server.app)
    queue.server.httpd.app = f
    return f


def test_login_gets_csrf_cookie_first_and_sends_token_and_referer(make_queue):
    queue = make_queue(mode="edx")
    f = Faults(queue.server.app)
    queue.server.httpd.app = f
    hooks = CountingHooks()
    client = queue.client(hooks)
    client.login()
    assert [(m, p) for m, p, _ in f.seen[:2]] == [("GET", "/xqueue/login/"), ("POST", "/xqueue/login/")]
    post_headers = f.seen[1][2]
    assert post_headers["X-Csrftoken"] and post_headers["Referer"] == queue.url
    assert hooks.errors == []
    # every later POST carries the (rotated) token: put_result works under enforced CSRF
    queue.submit()
    sub = parse_submission(client.get_submission("q1"))
    assert client.put_result(sub.header_raw, REPLY).accepted
    # and the server really enforces it
    raw = requests.Session()
    raw.cookies.update(client.session.cookies)
    r = raw.post(queue.url + "put_result/", data={"xqueue_header": sub.header_raw, "xqueue_body": "{}"}, timeout=5)
    assert r.status_code == 403


def test_edx_status_codes(make_queue):
    queue = make_queue(mode="edx")
    hooks = CountingHooks()
    client = queue.client(hooks)
    assert client.get_submission("q1") is None            # 404 "is empty": lazy login first (401)
    assert hooks.relogins == 1
    with pytest.raises(QueueError, match="not found"):
        client.get_submission("nope")
    queue.submit()
    sub = parse_submission(client.get_submission("q1"))
    forged = json.dumps({"submission_id": int(sub.submission_id), "submission_key": "0" * 32})
    out = client.put_result(forged, REPLY)
    assert out.foreign_key and not out.accepted
    missing = client.put_result(json.dumps({"submission_id": 999, "submission_key": "0" * 32}), REPLY)
    assert missing.rejected and missing.message == "Submission does not exist"
    assert hooks.relogins == 1  # 403/404 answers are not login problems
    assert client.put_result(sub.header_raw, REPLY).accepted


def test_relogin_once_after_session_expiry(queue):
    hooks = CountingHooks()
    client = queue.client(hooks)
    client.login()
    queue.submit()
    queue.app.expire_sessions()  # the server forgot every session
    content = client.get_submission("q1")
    assert content is not None and hooks.relogins == 1
    queue.app.expire_sessions()
    assert client.put_result(parse_submission(content).header_raw, REPLY).accepted
    assert hooks.relogins == 2


def test_short_session_ttl_relogs_in(make_queue):
    queue = make_queue(session_ttl_s=0.3)
    hooks = CountingHooks()
    client = queue.client(hooks)
    client.login()
    time.sleep(0.4)
    assert client.get_queuelen("q1") == 0 and hooks.relogins == 1


def test_wrong_password_is_a_clear_login_error(queue):
    hooks = CountingHooks()
    client = queue.client(hooks, queue_password="wrong")
    with pytest.raises(LoginError, match="Incorrect login credentials"):
        client.login()
    with pytest.raises(LoginError):
        client.get_submission("q1")  # re-login once, then give up: no login storm
    assert hooks.relogins == 1 and hooks.errors.count("login") == 2
    assert "wrong" not in repr(client.settings)


def test_login_then_still_unauthorised_raises(queue, faults):
    client = queue.client()
    client.login()
    faults.plan = [("get_queuelen/", 401, "before"), ("get_queuelen/", 401, "before")]
    with pytest.raises(LoginError, match="still not authorised"):
        client.get_queuelen("q1")
    assert faults.count("/login/") == 4  # the first login (GET+POST) and exactly one re-login


def test_5xx_retried_with_backoff(queue, faults):
    hooks = CountingHooks()
    client = queue.client(hooks)
    client.login()
    queue.submit()
    faults.plan = [("get_submission/", 503, "before"), ("get_submission/", 500, "before")]
    assert client.get_submission("q1") is not None
    assert faults.count("get_submission/") == 3 and hooks.errors.count("http_5xx") == 2


def test_5xx_retries_are_bounded(queue, faults):
    client = queue.client()
    client.login()
    faults.plan = [("get_queuelen/", 500, "before")] * 10
    start = time.monotonic()
    with pytest.raises(QueueError, match="HTTP 500"):
        client.get_queuelen("q1")
    assert faults.count("get_queuelen/") == 4 and time.monotonic() - start < 20


def test_put_result_resent_after_gateway_error_but_never_after_a_500(queue, faults, receiver):
    client = queue.client()
    sub_id = queue.submit(callback=receiver.url + "a")["id"]
    sub = parse_submission(client.get_submission("q1"))
    # 502 before the app: the request never arrived, sending it again is safe
    faults.plan = [("put_result/", 502, "before")]
    assert client.put_result(sub.header_raw, REPLY).accepted
    assert faults.count("put_result/") == 2
    # a 500 after the app processed it: never sent again (exactly one post per pull)
    queue.submit(key="b", callback=receiver.url + "b")
    sub2 = parse_submission(client.get_submission("q1"))
    faults.plan = [("put_result/", 500, "after")]
    with pytest.raises(QueueError, match="HTTP 500"):
        client.put_result(sub2.header_raw, REPLY)
    assert faults.count("put_result/") == 3
    assert len(receiver.wait(2)) == 2 and queue.row(sub_id)["puts"] == 1


def test_connection_refused_retried_then_raised_quickly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hooks = CountingHooks()
    client = make_client(f"http://127.0.0.1:{port}/xqueue/", hooks)
    start = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        client.get_submission("q1")
    assert hooks.errors.count("connect") == 4 and time.monotonic() - start < 20


def test_basic_auth_sent_for_a_proxy(queue, faults):
    client = queue.client(basic_auth_user="proxy", basic_auth_password="proxy-pw")
    client.get_queuelen("q1")
    import base64
    expected = "Basic " + base64.b64encode(b"proxy:proxy-pw").decode()
    assert all(h.get("Authorization") == expected for _, _, h in faults.seen)


def test_after_fork_keeps_the_session_with_fresh_connections(queue):
    hooks = CountingHooks()
    client = queue.client(hooks)
    client.login()
    old = client.session
    client.after_fork()
    assert client.session is not old
    assert client.get_queuelen("q1") == 0 and hooks.relogins == 0


def test_after_fork_builds_the_new_session_only_when_used(queue):
    client = queue.client()
    client.login()
    parent_session = client.session
    cookies = {c.name: c.value for c in parent_session.cookies}
    client.after_fork()
    assert client._session is None  # nothing built for a child that sends nothing
    client.close()                  # and closing it leaves the parent's pool alone
    assert parent_session.adapters  # not closed: still the parent's
    fresh = client.session
    assert fresh is not parent_session and fresh is client.session
    assert {c.name: c.value for c in fresh.cookies} == cookies
    assert client.get_queuelen("q1") == 0


def test_fetch_files_rejects_bad_maps(queue):
    client = queue.client()
    for files, match in [({"../x": "http://127.0.0.1:9/x"}, "bad file name"),
                         ({"a\nb.py": "http://127.0.0.1:9/x"}, "bad file name"),
                         ({"a\0.py": "http://127.0.0.1:9/x"}, "bad file name"),
                         ({"a.py": "file:///etc/passwd"}, "not http"),
                         ({"URL_FOR_EXTERNAL_DICTS": "ftp://x/"}, "not http")]:
        with pytest.raises(FilesPayloadError, match=match):
            client.fetch_files(files)


def test_fetch_files_missing_file_is_infra_and_bad_external_map_is_payload(queue):
    from xgrader.errors import InfraError

    client = queue.client()
    with pytest.raises(InfraError, match="HTTP 404"):
        client.fetch_files({"a.py": queue.url + "files/" + "0" * 32})
    token = queue.store.add_file("map", b"not json")
    with pytest.raises(FilesPayloadError, match="not JSON"):
        client.fetch_files({"URL_FOR_EXTERNAL_DICTS": queue.url + "files/" + token})
    token = queue.store.add_file("map", json.dumps({"a.py": 3}).encode())
    with pytest.raises(FilesPayloadError, match="URL strings"):
        client.fetch_files({"URL_FOR_EXTERNAL_DICTS": queue.url + "files/" + token})


def test_client_works_against_another_legacy_server(mini_xqueue):
    """Not only the bundled server: the daemon tests' independent legacy-style
    server (HTTP 200 envelopes, a new key per pull)."""
    mini_xqueue.lease_s = 0.2
    entry = mini_xqueue.submit("q1", {"student_response": "x", "grader_payload": "g", "student_info": "{}"})
    client = make_client(mini_xqueue.url)
    client.login()
    assert client.get_queuelen("q1") == 1
    first = parse_submission(client.get_submission("q1"))
    time.sleep(0.3)
    again = parse_submission(client.get_submission("q1"))
    assert client.put_result(first.header_raw, REPLY).foreign_key
    assert client.put_result(again.header_raw, REPLY).accepted
    assert client.get_submission("q1") is None and entry.results == [json.loads(REPLY.to_body())]


# -- the fast path (get_submission, put_result, get_queuelen over one socket) --

class ScriptedServer:
    """A raw HTTP/1.1 server on loopback: records each request (method, path,
    headers) and each connection; answers from `reply(n, path)` -> (status,
    extra headers, body, close connection after)."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.connections = 0
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}/xqueue/"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        with conn:
            while True:
                line = f.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers = {}
                while (h := f.readline()) not in (b"\r\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                f.read(int(headers.get("content-length", 0)))
                self.requests.append((method, path, headers))
                status, extra, body, close = self.reply(len(self.requests), path)
                head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in extra) + ("Connection: close\r\n" if close else "")
                conn.sendall(head.encode() + b"\r\n" + body)
                if close:
                    return

    def stop(self) -> None:
        self.srv.close()


def _envelope(code: int, content) -> bytes:
    return json.dumps({"return_code": code, "content": content}).encode()


def test_fast_path_keeps_one_connection_and_never_uses_requests(queue, monkeypatch):
    client = queue.client()
    client.login()
    queue.submit()

    def no_requests(*a, **k):
        raise AssertionError("the hot calls must not go through requests")

    monkeypatch.setattr(client.session, "request", no_requests)
    assert client.get_queuelen("q1") == 1
    sock = client._sock
    sub = parse_submission(client.get_submission("q1"))
    assert client.put_result(sub.header_raw, REPLY).accepted
    assert client._sock is sock and sock is not None  # kept alive across the three calls


def test_fast_path_stores_set_cookie_and_sends_it_back():
    def reply(n, path):
        return 200, [("Set-Cookie", f"sessionid=s{n}; Path=/")], _envelope(0, n), False

    server = ScriptedServer(reply)
    try:
        client = make_client(server.url)
        client.session.cookies.set("csrftoken", "tok", path="/")
        assert client.get_queuelen("q1") == 1
        assert client.get_queuelen("q1") == 2
        assert client.session.cookies.get("sessionid") == "s2"
        first, second = server.requests[0][2], server.requests[1][2]
        assert first["cookie"] == "csrftoken=tok"
        assert "sessionid=s1" in second["cookie"] and "csrftoken=tok" in second["cookie"]
        assert server.connections == 1
    finally:
        server.stop()


def test_fast_path_post_sends_csrf_referer_and_form_body(queue):
    f = Faults(queue.server.app)
    queue.server.httpd.app = f
    client = queue.client()
    client.login()
    queue.submit()
    sub = parse_submission(client.get_submission("q1"))
    assert client.put_result(sub.header_raw, REPLY).accepted
    method, path, headers = f.seen[-1]
    assert (method, path) == ("POST", "/xqueue/put_result/")
    assert headers["Referer"] == queue.url and headers["User-Agent"] == "xgrader"


def test_fast_path_reconnects_after_the_server_closes():
    def reply(n, path):
        return 200, [], _envelope(0, n), n == 1   # the first reply closes its connection

    server = ScriptedServer(reply)
    try:
        hooks = CountingHooks()
        client = make_client(server.url, hooks)
        assert client.get_queuelen("q1") == 1
        assert client.get_queuelen("q1") == 2 and client.get_queuelen("q1") == 3
        assert server.connections == 2 and not hooks.errors
    finally:
        server.stop()


def test_fast_path_reads_the_charset_and_only_for_plain_http():
    def reply(n, path):
        return 200, [("Content-Type", "text/html; charset=iso-8859-1")], \
            json.dumps({"return_code": 0, "content": "caf\u00e9"}, ensure_ascii=False).encode("latin-1"), False

    server = ScriptedServer(reply)
    try:
        client = make_client(server.url)
        assert client._fast_ok
        assert client.get_submission("q1") == "caf\u00e9"
    finally:
        server.stop()
    assert not make_client("https://127.0.0.1:9/xqueue/")._fast_ok
    assert not make_client("http://u:p@127.0.0.1:9/xqueue/")._fast_ok   # requests turns these into auth
