"""The HTTP server under xgrader's WSGI apps (the bundled queue server,
push mode, the metrics endpoint): waitress, run from a thread, with a
connection cap and a graceful stop.

waitress is a maintained, pure-Python HTTP/1.1 server (keep-alive,
pipelining, chunked request bodies, 100-continue): it runs wherever Python
does, as any user, from a wheel. Requests are read and parsed by its event
loop, so a slow client holds a connection slot, never a worker thread; the
slots are capped (`max_connections`) and idle kept-alive connections are
closed after `idle_timeout_s`.

Two framing checks go beyond waitress' own, whose parser rejects whitespace
before a colon, bare CR/LF, signed, repeated or non-digit Content-Length:
a header name containing `_` is a 400 (waitress would drop it silently; a
front proxy may read it as the `-` form), and so is a request carrying both
Content-Length and Transfer-Encoding (waitress would let the chunked
framing win; a front proxy may have used the length). Either error closes
the connection, so nothing that follows is read as a next request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError, get_header_lines
from waitress.server import TcpWSGIServer

WSGIApp = Callable[[dict, Callable], Any]

# waitress warns "Task queue depth is N" whenever a complete request waits
# for a free thread: routine with more connections than threads, one log
# line per request under load.
logging.getLogger("waitress.queue").setLevel(logging.ERROR)


class StrictRequestParser(HTTPRequestParser):
    """waitress' request parser, refusing the ambiguous framings above."""

    def parse_header(self, header_plus: bytes) -> None:
        _, crlf, fields = header_plus.partition(b"\r\n")
        if crlf:
            for line in get_header_lines(fields):
                if b"_" in line.partition(b":")[0]:
                    raise ParsingError("Invalid header name")
        super().parse_header(header_plus)
        if self.chunked and "CONTENT_LENGTH" in self.headers:
            raise ParsingError("Content-Length with Transfer-Encoding")


class _Channel(HTTPChannel):
    parser_class = StrictRequestParser


class _Server(TcpWSGIServer):
    channel_class = _Channel


class WSGIServer:
    """One listening socket served by waitress.

    `app` may be replaced while serving (tests wrap it to inject faults).
    `connection_limit` counts the listener and waitress' wake-up pipe too,
    so `max_connections` clients are served at once; more wait in the
    listen backlog until one closes."""

    def __init__(self, app: WSGIApp, host: str, port: int, *, threads: int = 4,
                 max_connections: int = 100, max_body_bytes: int = 10 * 1024 * 1024,
                 idle_timeout_s: float = 75.0, name: str = "http") -> None:
        self.app = app
        self.name = name
        self._in_app = 0
        self._lock = threading.Lock()
        adj = Adjustments(
            host=host, port=port, threads=threads, connection_limit=max_connections + 2,
            channel_timeout=int(max(1, idle_timeout_s)), cleanup_interval=max(1, min(30, int(idle_timeout_s))),
            max_request_body_size=max_body_bytes, ident="xgrader", asyncore_use_poll=True,
            expose_tracebacks=False, log_socket_errors=False)
        self._server = _Server(self._serve, adj=adj)
        self.host = str(self._server.effective_host)
        self.port = int(self._server.effective_port)
        self._thread: threading.Thread | None = None
        self._running = False
        self._stopped = threading.Event()

    def _serve(self, environ: dict, start_response: Callable) -> Any:
        with self._lock:
            self._in_app += 1
        try:
            result = self.app(environ, start_response)
            # The body is built here, so the request counts as in the app
            # until it is complete. waitress would send it for HEAD too.
            body = list(result)
            close = getattr(result, "close", None)
            if close is not None:
                close()
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else body
        finally:
            with self._lock:
                self._in_app -= 1

    # -- running -----------------------------------------------------------------
    def serve_forever(self) -> None:
        """Blocking: the event loop, until :meth:`shutdown`."""
        self._running = True
        try:
            self._server.run()
        finally:
            self._stopped.set()

    def start(self) -> "WSGIServer":
        """Serve from a daemon thread."""
        self._running = True
        self._thread = threading.Thread(target=self.serve_forever, name=f"{self.name}-loop", daemon=True)
        self._thread.start()
        return self

    def close_listener_in_child(self) -> None:
        """In a forked child: drop the inherited listening socket, so a
        stopped parent really stops accepting."""
        try:
            self._server.socket.close()
        except OSError:
            pass

    def busy(self) -> int:
        """Requests inside the app right now."""
        with self._lock:
            return self._in_app

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop accepting; let requests in progress finish and their answers
        be written (bounded by `grace_s`); then close every connection and
        end the event loop and the worker threads. A stopped server answers
        nothing, on new or kept-alive connections."""
        srv = self._server
        if self._stopped.is_set():
            return
        if not self._running:  # never served: nothing in flight, no loop to ask
            self._close_listener()
            self._close_all()
            self._stopped.set()
            srv.task_dispatcher.shutdown(timeout=1)
            return
        end = time.monotonic() + grace_s
        self._in_loop(self._close_listener)
        while time.monotonic() < end and self._in_loop(self._requests_pending):
            time.sleep(0.02)
        self._in_loop(self._close_when_flushed)
        while time.monotonic() < end and self._in_loop(lambda: bool(srv.active_channels)):
            time.sleep(0.02)
        self._in_loop(self._close_all)
        self._stopped.wait(max(1.0, end - time.monotonic()))
        srv.task_dispatcher.shutdown(timeout=max(0.5, end - time.monotonic()))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    # The event loop owns its sockets: these run in it (through waitress'
    # trigger), never from the caller's thread.
    def _in_loop(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        if self._stopped.is_set():
            return None
        out: list[Any] = []
        done = threading.Event()

        def thunk() -> None:
            try:
                out.append(fn())
            finally:
                done.set()

        self._server.trigger.pull_trigger(thunk)
        done.wait(timeout)
        return out[0] if out else None

    def _close_listener(self) -> None:
        srv = self._server
        srv.accepting = False
        wasyncore.dispatcher.close(srv)  # the listener only; the trigger stays

    def _requests_pending(self) -> bool:
        return self.busy() > 0 or any(ch.requests for ch in self._server.active_channels.values())

    def _close_when_flushed(self) -> None:
        for channel in list(self._server.active_channels.values()):
            channel.close_when_flushed = True

    def _close_all(self) -> None:
        srv = self._server
        for channel in list(srv.active_channels.values()):
            channel.handle_close()
        srv.trigger.close()  # the last entry of the loop's map: run() returns
