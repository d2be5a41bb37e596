"""A real Chat Completions server on 127.0.0.1 with scripted replies (the
`fake_llm` fixture), and a throwaway redis-server (the `redis_url` fixture).

Script entries, consumed one per request (then `default` repeats):
    Reply.hint("text")          {"hint": "text"} as the message content
    Reply.content("raw")        any content (malformed JSON, fixes...)
    Reply.slow(seconds, reply)  sleep, then answer
    Reply.status(500)           an HTTP error with an OpenAI-style error body
    Reply.drop()                close the connection without answering
    Reply.trickle(seconds)      headers at once, then the body a byte at a time
                                spread over `seconds` (defeats per-read timeouts)
Every request body is recorded (`server.requests`, parsed JSON) so tests can
assert what a prompt contained.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest


@dataclass(frozen=True)
class Reply:
    kind: str                      # content | status | drop | slow
    content: str = ""
    status: int = 200
    delay: float = 0.0
    inner: "Reply | None" = None

    @classmethod
    def hint(cls, text: str) -> "Reply":
        return cls("content", json.dumps({"hint": text}))

    @classmethod
    def fixes(cls, *fixes: str) -> "Reply":
        return cls("content", json.dumps({"fixes": list(fixes)}))

    @classmethod
    def raw(cls, content: str) -> "Reply":
        return cls("content", content)

    @classmethod
    def slow(cls, delay: float, inner: "Reply") -> "Reply":
        return cls("slow", delay=delay, inner=inner)

    @classmethod
    def error(cls, status: int = 500) -> "Reply":
        return cls("status", status=status)

    @classmethod
    def drop(cls) -> "Reply":
        return cls("drop")

    @classmethod
    def trickle(cls, seconds: float, inner: "Reply | None" = None) -> "Reply":
        return cls("trickle", delay=seconds, inner=inner)


GOOD = Reply.hint("Look at what your function returns when the input is negative: "
                  "the statement says to square it, so the sign should not matter.")


@dataclass
class FakeLLM:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    script: list[Reply] = field(default_factory=list)
    default: Reply = GOOD
    # Optional: choose the reply from the request (e.g. repair vs hint prompts).
    responder: Callable[[dict[str, Any]], Reply | None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append(body)
            if self.responder is not None:
                chosen = self.responder(body)
                if chosen is not None:
                    return chosen
            return self.script.pop(0) if self.script else self.default

    def prompts(self) -> list[str]:
        """Every message content ever sent, one string per request."""
        return ["\n".join(m.get("content", "") for m in r.get("messages", [])) for r in self.requests]

    def raw_bodies(self) -> str:
        return "\n".join(json.dumps(r) for r in self.requests)


def _handler(fake: FakeLLM):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": "not found"}})
                return
            body = json.loads(raw)
            body["_auth"] = self.headers.get("Authorization", "")
            reply = fake.next_reply(body)
            while reply.kind == "slow":
                time.sleep(reply.delay)
                reply = reply.inner or GOOD
            if reply.kind == "drop":
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if reply.kind == "trickle":
                self._trickle(reply)
                return
            if reply.kind == "status":
                self._send(reply.status, {"error": {"message": "scripted failure", "type": "server_error"}})
                return
            prompt_tokens = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
            completion_tokens = len(reply.content.split())
            self._send(200, {
                "id": f"chatcmpl-{len(fake.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply.content}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            })

        def _trickle(self, reply: Reply) -> None:
            inner = reply.inner or GOOD
            data = json.dumps({"id": "t", "object": "chat.completion", "created": 0, "model": "fake",
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": inner.content}}]}).encode()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.flush()
                pause = reply.delay / max(1, len(data))
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): fine

    return Handler


@pytest.fixture
def fake_llm():
    fake = FakeLLM()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> str:
    """A real redis-server on a free loopback port, no persistence; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run scripts/setup.sh (scripts/setup-redis.sh)")
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--protected-mode", "yes", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A fresh, empty database on the session's redis-server."""
    import redis

    client = redis.Redis.from_url(redis_server + "/0", socket_timeout=5)
    client.flushdb()
    client.close()
    return redis_server + "/0"
