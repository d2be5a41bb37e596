"""A small threaded HTTP/1.1 server for the WSGI app, with keep-alive.

werkzeug's development server closes every connection after one response
(and waits up to 10 ms for stray input), so each grader call paid a TCP
handshake and a new thread. Graders and the LMS call the queue in tight
loops; here a connection stays open and keeps its thread. Request bodies
must carry a Content-Length (every xqueue client sends one); the unread
rest of a body is drained before the next request is parsed.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import unquote

MAX_DRAIN = 64 * 1024 * 1024
IDLE_TIMEOUT_S = 75.0  # an idle keep-alive connection is closed after this


class _BodyReader(io.RawIOBase):
    """Exactly Content-Length bytes of the socket, never more."""

    def __init__(self, rfile: Any, length: int) -> None:
        self.rfile = rfile
        self.left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.left <= 0:
            return 0
        data = self.rfile.read(min(len(buf), self.left))
        if not data:
            self.left = 0
            return 0
        buf[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def drain(self) -> bool:
        if self.left > MAX_DRAIN:
            return False
        while self.left > 0:
            chunk = self.rfile.read(min(65536, self.left))
            if not chunk:
                return False
            self.left -= len(chunk)
        return True


class WSGIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "xgrader-queue"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # access logs cost more than the request
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, socket.timeout):
            self.close_connection = True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._run
        raise AttributeError(name)

    def _run(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self.send_error(411, "Content-Length required")
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.send_error(400, "bad Content-Length")
            self.close_connection = True
            return
        body = _BodyReader(self.rfile, length)
        path, _, query = self.path.partition("?")
        if "://" in path:  # absolute-form request target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        host, port = self.server.server_address[:2]
        environ = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_LENGTH": str(length) if length else "",
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BufferedReader(body, 65536),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for key, value in self.headers.items():
            name = "HTTP_" + key.upper().replace("-", "_")
            if name in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                continue
            environ[name] = f"{environ[name]},{value}" if name in environ else value

        status_headers: list = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            status_headers[:] = [status, headers]
            return lambda data: None  # write() is not used by the app

        self.server.busy(+1)
        try:
            result = self.server.app(environ, start_response)
            try:
                payload = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close:
                    close()
        finally:
            self.server.busy(-1)
        status, headers = status_headers
        code, _, reason = status.partition(" ")
        self.send_response_only(int(code), reason)
        for k, v in headers:
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        if not body.drain():
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Date", self.date_time_string())
        # One write for headers and body: two small writes meet Nagle and
        # delayed ACKs and cost ~40 ms per response.
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(payload)
        self.flush_headers()


class KeepAliveWSGIServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, app: Callable) -> None:
        self.app = app
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Condition()
        self._busy = 0
        super().__init__((host, port), WSGIHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def busy(self, delta: int) -> None:
        with self._conns_lock:
            self._busy += delta
            if not self._busy:
                self._conns_lock.notify_all()

    def close_connections(self, grace_s: float = 5.0) -> None:
        """After shutdown(): let requests in progress finish (bounded), then
        end the kept-alive connections so their threads stop serving (a
        stopped server must not answer anything)."""
        with self._conns_lock:
            self._conns_lock.wait_for(lambda: self._busy == 0, timeout=grace_s)
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
