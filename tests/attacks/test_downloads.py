"""Attack class "file downloads" (docs/threat-model.md): xqueue_files over real HTTP on loopback: the queue's
credentials reach its own origin only, and a file URL cannot make the
grader fetch from loopback, link-local or private addresses (checked on the
address actually connected to), nor follow a redirect to another origin."""

from __future__ import annotations

import base64
import socket

import pytest

from tests.support.peers import Peer
from xgrader.client import FilesPayloadError, XQueueClient
from xgrader.config import Settings

SECRET = b"metrics: xgrader_build_info 1\n"   # what an SSRF would read back


def file_peer(make_peer, body: bytes = b"print(1)\n", redirect_to: str | None = None) -> Peer:
    def answer(seen):
        if redirect_to and seen.path.startswith("/redirect"):
            return 302, {"Location": redirect_to}, b""
        return 200, {"Content-Type": "text/plain"}, body
    return make_peer(answer)


def client_for(queue: Peer, **settings) -> XQueueClient:
    values = dict(queue_url=queue.origin + "/xqueue/", queue_user="u", queue_password="p",
                  basic_auth_user="proxy", basic_auth_password="proxy-pw", **settings)
    client = XQueueClient(Settings(**values))
    # The session cookie the queue set at login (cookies are per host, not per port).
    client.session.cookies.set("sessionid", "queue-session-secret", domain="127.0.0.1", path="/")
    return client


def test_credentials_go_to_the_queue_origin_only(make_peer):
    queue = file_peer(make_peer, b"from the queue\n")
    other = file_peer(make_peer, b"from elsewhere\n")
    client = client_for(queue, file_hosts=[f"127.0.0.1:{other.port}"])
    files = client.fetch_files({"a.py": queue.origin + "/xqueue/files/a",
                                "b.py": other.origin + "/media/b"})
    assert files == {"a.py": b"from the queue\n", "b.py": b"from elsewhere\n"}
    (to_queue,), (to_other,) = queue.seen, other.seen
    assert to_queue.headers["authorization"] == "Basic " + base64.b64encode(b"proxy:proxy-pw").decode()
    assert "queue-session-secret" in to_queue.headers["cookie"]
    assert "authorization" not in to_other.headers and "cookie" not in to_other.headers


def test_loopback_file_url_on_another_port_is_refused(make_peer):
    queue = file_peer(make_peer)
    metrics = file_peer(make_peer, SECRET)   # the daemon's own /metrics port, say
    client = client_for(queue)
    with pytest.raises(FilesPayloadError, match="loopback"):
        client.fetch_files({"a.py": metrics.origin + "/metrics"})
    assert metrics.seen == []


def test_the_check_is_on_the_resolved_address(make_peer):
    """A host name is judged by what it resolves to when connecting:
    `localhost`, and a name whose DNS answer is loopback."""
    queue = file_peer(make_peer)
    metrics = file_peer(make_peer, SECRET)
    client = client_for(queue)
    with pytest.raises(FilesPayloadError, match="loopback"):
        client.fetch_files({"a.py": f"http://localhost:{metrics.port}/metrics"})
    real = socket.getaddrinfo

    def rebound(host, *args, **kwargs):   # files.example.org's DNS now points home
        return real("127.0.0.1" if host == "files.example.org" else host, *args, **kwargs)

    socket.getaddrinfo = rebound
    try:
        with pytest.raises(FilesPayloadError, match="files.example.org resolves to 127.0.0.1"):
            client.fetch_files({"a.py": f"http://files.example.org:{metrics.port}/metrics"})
    finally:
        socket.getaddrinfo = real
    assert metrics.seen == []


def test_private_and_link_local_addresses_are_refused_before_connecting(make_peer):
    queue = file_peer(make_peer)
    client = client_for(queue, request_timeout_s=2)
    for url, kind in [("http://169.254.169.254/latest/meta-data/", "link-local"),
                      ("http://10.0.0.1/x", "private"), ("http://[::1]:9/x", "loopback"),
                      ("http://[::ffff:127.0.0.1]:9/x", "loopback"), ("http://0.0.0.0:9/x", "unspecified"),
                      ("http://100.64.0.1/x", "not a public")]:
        with pytest.raises(FilesPayloadError, match=kind):
            client.fetch_files({"a.py": url})


def test_allowlist_names_a_host_or_a_network(make_peer):
    queue = file_peer(make_peer)
    files = file_peer(make_peer, b"ok\n")
    for allow in ([f"127.0.0.1:{files.port}"], ["127.0.0.1"], ["127.0.0.0/8"], ["localhost"]):
        client = client_for(queue, file_hosts=allow)
        host = "localhost" if allow == ["localhost"] else "127.0.0.1"
        assert client.fetch_files({"a.py": f"http://{host}:{files.port}/f"}) == {"a.py": b"ok\n"}
    client = client_for(queue, file_hosts=[f"127.0.0.1:{files.port + 1}"])   # another port: no
    with pytest.raises(FilesPayloadError, match="loopback"):
        client.fetch_files({"a.py": f"http://127.0.0.1:{files.port}/f"})


def test_no_redirect_to_another_origin(make_peer):
    metrics = file_peer(make_peer, SECRET)
    queue = file_peer(make_peer, b"same origin\n", redirect_to=metrics.origin + "/metrics")
    client = client_for(queue, file_hosts=["127.0.0.1"])   # even to an allowed host
    with pytest.raises(FilesPayloadError, match="another origin"):
        client.fetch_files({"a.py": queue.origin + "/redirect/a"})
    assert metrics.seen == []
    # A redirect within the origin is followed (with the queue's credentials).
    same = file_peer(make_peer, b"same origin\n")
    same.answer = lambda seen: ((302, {"Location": "/xqueue/files/real"}, b"")
                                if seen.path.startswith("/redirect") else (200, {}, b"same origin\n"))
    client = client_for(same)
    assert client.fetch_files({"a.py": same.origin + "/redirect/a"}) == {"a.py": b"same origin\n"}
    assert [s.path for s in same.seen] == ["/redirect/a", "/xqueue/files/real"]
    assert all("queue-session-secret" in s.headers["cookie"] for s in same.seen)


def test_relative_file_urls_are_taken_relative_to_the_queue(make_peer):
    """edx-submissions' default storage hands out /media/... paths."""
    queue = file_peer(make_peer, b"relative\n")
    client = client_for(queue)
    assert client.fetch_files({"a.py": "/media/q/1234"}) == {"a.py": b"relative\n"}
    assert queue.seen[0].path == "/media/q/1234"


def test_push_mode_downloads_are_checked_too(make_peer):
    from xgrader.push import fetch_files

    metrics = file_peer(make_peer, SECRET)
    with pytest.raises(FilesPayloadError, match="loopback"):
        fetch_files({"a.py": metrics.origin + "/metrics"}, Settings())
    allowed = Settings(file_hosts=["127.0.0.1"], basic_auth_user="proxy", basic_auth_password="pw")
    assert fetch_files({"a.py": metrics.origin + "/x"}, allowed) == {"a.py": SECRET}
    assert "authorization" not in metrics.seen[-1].headers   # push mode sends no credentials
