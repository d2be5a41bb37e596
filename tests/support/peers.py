"""Small HTTP peers on loopback for the client's safety tests: a server that
records every request (method, path, headers, body) and answers from a
function, which may also drop the connection after reading the request."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

DROP = "drop"   # an answer: close the connection without replying


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes] | str


class Peer:
    """`answer(seen) -> (status, headers, body)` or DROP."""

    def __init__(self, answer: Callable[[Seen], Answer]) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with peer.lock:
                    peer.seen.append(seen)
                out = peer.answer(seen)
                if out == DROP:
                    self.close_connection = True
                    self.connection.close()
                    return
                status, headers, data = out
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self, suffix: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.split("?")[0].endswith(suffix)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def envelope(code: int, content: Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "text/html"}, json.dumps({"return_code": code, "content": content}).encode()


@pytest.fixture
def make_peer():
    made: list[Peer] = []

    def make(answer: Callable[[Seen], Answer]) -> Peer:
        peer = Peer(answer)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.stop()
