"""Running the bundled queue: its WSGI app on waitress (xgrader.wsgi_server)
plus background delivery, clean shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import sys
import threading
from typing import IO

from xgrader.queue_server.app import QueueApp
from xgrader.queue_server.config import QueueServerConfig
from xgrader.queue_server.delivery import Deliverer
from xgrader.queue_server.store import Store
from xgrader.wsgi_server import WSGIServer

UPLOAD_SLACK = 1024 * 1024  # multipart framing around max_upload_bytes: the app answers 413 itself


class QueueServer:
    """The whole server; usable in-process (tests) or from `xgrader queue serve`."""

    def __init__(self, config: QueueServerConfig) -> None:
        self.config = config
        self.store = Store(config.db)
        self.deliverer = Deliverer(self.store, tries=config.delivery_tries, backoff_s=config.delivery_backoff_s,
                                   timeout_s=config.delivery_timeout_s, workers=config.delivery_workers)
        self.app = QueueApp(config, self.store, on_result=self.deliverer.submit)
        try:
            self.httpd = WSGIServer(self.app, config.host, config.port, threads=config.threads,
                                    max_connections=config.max_connections,
                                    max_body_bytes=config.max_upload_bytes + UPLOAD_SLACK,
                                    idle_timeout_s=config.idle_timeout_s, name="xq-http")
        except BaseException:
            self.store.close()
            raise
        self.port = self.httpd.port
        self.url = f"http://{config.host}:{self.port}/xqueue/"

    def start(self) -> "QueueServer":
        """Serve in a background thread."""
        self.deliverer.start()
        self.httpd.start()
        return self

    def stop(self) -> None:
        """Requests in progress finish; kept-alive connections are closed;
        pending callbacks stay pending in the database."""
        self.httpd.shutdown()
        self.deliverer.stop()
        self.store.close()

    def serve_forever(self, out: IO[str] = sys.stdout) -> int:
        """Foreground: print the ready line, serve until SIGTERM/SIGINT."""
        stopping = threading.Event()
        old = {s: signal.signal(s, lambda signum, frame: stopping.set()) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            print(f"xgrader queue listening on {self.url}", file=out, flush=True)
            while not stopping.wait(1.0):
                pass
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        print("xgrader queue stopped", file=out, flush=True)
        return 0
