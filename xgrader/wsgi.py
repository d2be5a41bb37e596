"""Serving xgrader's WSGI apps on a maintained production server (waitress:
pure Python, so it runs from a wheel on any laptop, with strict request
parsing and bounded worker threads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def serve(app: Callable[..., Any], host: str, port: int, *, threads: int = 4,
          on_listen: Callable[[str, int], None] | None = None) -> None:
    """Block serving `app` until the process is told to stop (SIGTERM/SIGINT).
    `on_listen(host, port)` is called with the bound port (port 0 picks one)."""
    import waitress.server

    server = waitress.server.create_server(app, host=host, port=port, threads=threads, ident="xgrader")
    if on_listen is not None:
        on_listen(host, server.effective_port)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
