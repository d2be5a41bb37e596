"""A small threaded HTTP/1.1 server for the WSGI app, with keep-alive.

werkzeug's development server closes every connection after one response
(and waits up to 10 ms for stray input), so each grader call paid a TCP
handshake and a new thread. Graders and the LMS call the queue in tight
loops; here a connection stays open and keeps its thread. Requests are
parsed here (http.server builds an email.message per request, a quarter of
the server's CPU per call); bodies must carry a Content-Length (every xqueue
client sends one): up to 64 KiB they are read whole before the app runs,
larger ones are streamed and their unread rest drained before the next
request is parsed.
"""

from __future__ import annotations

import io
import socket
import socketserver
import sys
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import unquote

MAX_DRAIN = 64 * 1024 * 1024
MAX_LINE = 65536  # request line or one header line (http.server's limit)
MAX_HEADERS = 100  # http.client's limit
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


_REASONS = {s.value: s.phrase for s in HTTPStatus}
_SKIP_HEADERS = ("content-length", "connection", "transfer-encoding")
_date_cache = [0, ""]
_ENV_KEYS: dict[str, str] = {}  # header name as sent -> its WSGI environ key
SMALL_BODY = 65536  # bodies up to this are read whole before the app runs


def _http_date() -> str:
    """The Date header, formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[1] = formatdate(now, usegmt=True)
        _date_cache[0] = now
    return _date_cache[1]


class WSGIHandler(socketserver.StreamRequestHandler):
    """One kept-alive connection: requests parsed here (request line, then
    header lines split at the first colon, as `http.client` does, without
    building an `email.message` per request), the app's response written in
    one send."""

    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # TCP_NODELAY

    def handle(self) -> None:
        self.close_connection = True
        try:
            while self.handle_one_request() and not self.close_connection:
                pass
        except (OSError, ValueError):  # reset, idle timeout, connection shut down by stop()
            self.close_connection = True

    def send_error(self, code: int, message: str) -> None:
        body = f"{code} {message}\n".encode("latin-1", "replace")
        self.wfile.write(
            f"HTTP/1.1 {code} {_REASONS.get(code, '')}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}"
            f"\r\nConnection: close\r\nDate: {_http_date()}\r\n\r\n".encode("latin-1") + body)
        self.close_connection = True

    def handle_one_request(self) -> bool:
        """Serve one request; False when the connection is to be closed."""
        rfile = self.rfile
        line = rfile.readline(MAX_LINE + 1)
        if not line:
            return False
        if len(line) > MAX_LINE:
            self.send_error(414, "Request-URI Too Long")
            return False
        words = line.decode("latin-1").split()
        if len(words) != 3:
            if words:
                self.send_error(400, "Bad request syntax")
            return False
        command, path, version = words
        major, dot, minor = version[5:].partition(".")
        if (not version.startswith("HTTP/") or not dot or not major.isdigit() or not minor.isdigit()
                or len(major) > 10 or len(minor) > 10):
            self.send_error(400, "Bad request version")
            return False
        vnum = (int(major), int(minor))
        if vnum >= (2, 0):
            self.send_error(505, "Invalid HTTP version")
            return False
        keep = vnum >= (1, 1)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        env: dict[str, Any] = {}
        count = 0
        last = None
        while True:
            raw = rfile.readline(MAX_LINE + 1)
            if len(raw) > MAX_LINE:
                self.send_error(431, "Line too long")
                return False
            if raw in (b"\r\n", b"\n", b""):
                break
            count += 1
            if count > MAX_HEADERS:
                self.send_error(431, "Too many headers")
                return False
            text = raw.decode("latin-1")
            if text[0] in " \t" and last is not None:  # obsolete line folding: continues the last header
                env[last] = env[last] + " " + text.strip()
                continue
            name, colon, value = text.partition(":")
            if not colon:
                continue  # not a header line: ignored, like email's parser
            key = _ENV_KEYS.get(name)
            if key is None:
                key = "HTTP_" + name.strip().upper().replace("-", "_")
                if len(_ENV_KEYS) < 512:  # header names are the client's: bounded
                    _ENV_KEYS[name] = key
            value = value.strip()
            env[key] = f"{env[key]},{value}" if key in env else value
            last = key
        conn = env.get("HTTP_CONNECTION", "").lower()
        if conn == "close":
            keep = False
        elif conn == "keep-alive":
            keep = True
        self.close_connection = not keep
        if env.get("HTTP_TRANSFER_ENCODING"):
            self.send_error(411, "Content-Length required")
            return False
        cl = env.pop("HTTP_CONTENT_LENGTH", "")
        # ASCII digits only: int() would also take "+5", "1_0" or " 5", and a
        # repeated header arrives joined ("5,5"); any of them is a 400.
        length = int(cl) if cl.isascii() and cl.isdigit() else (0 if not cl else -1)
        if length < 0:
            self.send_error(400, "bad Content-Length")
            return False
        if vnum >= (1, 1) and env.get("HTTP_EXPECT", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._run(env, command, path, version, length)
        return True

    def _run(self, env: dict, command: str, path: str, version: str, length: int) -> None:
        if length <= SMALL_BODY:  # the usual xqueue call: one read, no reader objects per request
            data = self.rfile.read(length) if length else b""
            if len(data) < length:
                self.close_connection = True
            body: Any = None
            stream: Any = io.BytesIO(data)
        else:
            body = _BodyReader(self.rfile, length)
            stream = io.BufferedReader(body, 65536)
        path, _, query = path.partition("?")
        if "://" in path:  # absolute-form request target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        server = self.server
        env.update({
            "REQUEST_METHOD": command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "latin-1") if "%" in path else path,
            "QUERY_STRING": query,
            "SERVER_NAME": server.host_str,
            "SERVER_PORT": server.port_str,
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_LENGTH": str(length) if length else "",
            "CONTENT_TYPE": env.pop("HTTP_CONTENT_TYPE", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": stream,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        })
        status_headers: list = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            status_headers[:] = [status, headers]
            return lambda data: None  # write() is not used by the app

        busy = server.busy
        busy.add(self)  # set.add/discard are atomic: no lock per request
        try:
            result = server.app(env, start_response)
            try:
                payload = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close:
                    close()
        finally:
            busy.discard(self)
        status, headers = status_headers
        out = [f"HTTP/1.1 {status}\r\n"]
        for k, v in headers:
            if k.lower() not in _SKIP_HEADERS:
                out.append(f"{k}: {v}\r\n")
        out.append(f"Content-Length: {len(payload)}\r\n")
        if body is not None and not body.drain():
            self.close_connection = True
        if self.close_connection:
            out.append("Connection: close\r\n")
        out.append(f"Date: {_http_date()}\r\n\r\n")
        head = "".join(out).encode("latin-1")
        # One write for headers and body: two small writes meet Nagle and
        # delayed ACKs and cost ~40 ms per response.
        self.wfile.write(head + payload if command != "HEAD" else head)


class KeepAliveWSGIServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, app: Callable) -> None:
        self.app = app
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.busy: set[WSGIHandler] = set()  # handlers inside the app right now
        super().__init__((host, port), WSGIHandler)
        self.host_str, self.port_str = str(self.server_address[0]), str(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self, grace_s: float = 5.0) -> None:
        """After shutdown(): let requests in progress finish (bounded), then
        end the kept-alive connections so their threads stop serving (a
        stopped server must not answer anything)."""
        deadline = time.monotonic() + grace_s
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
