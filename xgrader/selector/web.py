"""The remote selector: the same JSON as the external one, over HTTP POST
(served by xgrader.wsgi_server).

    POST /          (or /select)  request JSON -> reply JSON
    GET  /healthz   200 "ok"
    GET  /metrics   Prometheus text

Errors are JSON `{"error": {"code", "message"}}`: 400 bad_request, 401 a
missing or wrong bearer token, 405, 409 problem_set_complete, 413 too_large
(refused from Content-Length before the body is read), 500 policy_error.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from xgrader.selector.engine import Selector
from xgrader.selector.protocol import MAX_REQUEST_BYTES, SelectorError

STATUS = {"bad_request": 400, "too_large": 413, "problem_set_complete": 409, "policy_error": 500}
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 411: "Length Required", 413: "Content Too Large", 500: "Internal Server Error"}

StartResponse = Callable[..., Any]


class SelectorApp:
    """A WSGI app around one Selector."""

    def __init__(self, selector: Selector, token: str | None = None) -> None:
        self.selector = selector
        self.token = token or None
        self.registry = CollectorRegistry()
        self.requests = Counter("xgrader_selector_requests", "Selector requests by outcome",
                                ["outcome"], registry=self.registry)
        self.latency = Histogram("xgrader_selector_seconds", "Time to answer one selection",
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
                                 registry=self.registry)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/healthz":
            return _reply(start_response, 200, b"ok\n", "text/plain; charset=utf-8")
        if path == "/metrics":
            return _reply(start_response, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path not in ("/", "/select"):
            return self._error(start_response, 404, "not_found", f"no such path {path[:100]!r}")
        if method != "POST":
            return self._error(start_response, 405, "bad_request", "POST the request JSON")
        if self.token is not None:
            got = environ.get("HTTP_AUTHORIZATION", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
                return self._error(start_response, 401, "unauthorized", "missing or wrong bearer token")
        length = environ.get("CONTENT_LENGTH") or ""
        if not length.isdigit():
            return self._error(start_response, 411, "bad_request", "a Content-Length is required")
        if int(length) > MAX_REQUEST_BYTES:
            return self._error(start_response, 413, "too_large",
                               f"request of {length} bytes is over the {MAX_REQUEST_BYTES}-byte limit")
        body = environ["wsgi.input"].read(int(length))
        started = time.perf_counter()
        try:
            reply = self.selector.answer(body)
        except SelectorError as exc:
            self.requests.labels(exc.code).inc()
            return self._error(start_response, STATUS.get(exc.code, 400), exc.code, exc.message)
        self.latency.observe(time.perf_counter() - started)
        self.requests.labels("selected").inc()
        return _reply(start_response, 200, json.dumps(reply).encode(), "application/json")

    def _error(self, start_response: StartResponse, status: int, code: str, message: str) -> Iterable[bytes]:
        if code in ("not_found", "unauthorized"):
            self.requests.labels(code).inc()
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        return _reply(start_response, status, body, "application/json")


def _reply(start_response: StartResponse, status: int, body: bytes, ctype: str) -> Iterable[bytes]:
    start_response(f"{status} {_REASONS[status]}",
                   [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]
