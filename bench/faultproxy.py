"""A fault-injecting HTTP proxy for chaos runs: sits between grader replicas
and the queue server and, per request, forwards it, resets the connection,
answers 5xx, stalls before forwarding, or forwards and then loses the reply
(the request took effect upstream but the client sees a reset: the case that
tests "nothing answered twice"). Loopback only.

    proxy = FaultProxy("http://127.0.0.1:18040", reset=0.02, error=0.03, stall=0.01, lost_reply=0.01)
    proxy.start(); ... proxy.url ...; proxy.stop(); print(proxy.counts)
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


@dataclass(frozen=True)
class Exchange:
    """One forwarded request, for observers (timing, auditing)."""

    method: str
    path: str
    request_body: bytes
    status: int
    response_body: bytes
    started: float    # time.monotonic() when the request arrived
    finished: float   # ... when the upstream reply was read


class QuietServer(ThreadingHTTPServer):
    """Clients that vanish mid-request (a SIGKILLed replica) are part of the
    chaos, not an error worth a traceback on stderr."""

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        reset: float = 0.0,
        error: float = 0.0,
        stall: float = 0.0,
        stall_s: float = 2.0,
        lost_reply: float = 0.0,
        observe: Callable[[Exchange], None] | None = None,
        seed: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to loopback")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.reset, self.error, self.stall, self.stall_s = reset, error, stall, stall_s
        self.lost_reply = lost_reply
        self.observe = observe
        self.enabled = threading.Event()
        self.enabled.set()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._server = QuietServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _choose(self) -> str:
        if not self.enabled.is_set():
            return "forward"
        with self._lock:
            r = self._rng.random()
        for fault, p in (("reset", self.reset), ("error", self.error), ("stall", self.stall),
                         ("lost_reply", self.lost_reply)):
            if r < p:
                return fault
            r -= p
        return "forward"

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without TCP_NODELAY a reused
            # keep-alive connection waits ~40 ms (Nagle + delayed ACK) per reply,
            # which real queue servers (nginx, xgrader queue serve) do not.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _relay(self) -> None:
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._choose()
                proxy._count(fault)
                if fault == "reset":
                    # SO_LINGER 0: close sends RST, like a crashed peer or a dropping load balancer.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "error":
                    payload = b"<html><body>502 Bad Gateway (injected)</body></html>"
                    self.send_response(502)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError:
                    proxy._count("upstream_down")
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                finally:
                    conn.close()
                if proxy.observe is not None:
                    proxy.observe(Exchange(self.command, self.path, body, resp.status, data, arrived,
                                           time.monotonic()))
                if fault == "lost_reply":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = _relay

        return Handler
