"""Running the bundled queue: threaded keep-alive HTTP server + background
delivery, clean shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import sys
import threading
from typing import IO

from xgrader.queue_server.app import QueueApp
from xgrader.queue_server.config import QueueServerConfig
from xgrader.queue_server.delivery import Deliverer
from xgrader.queue_server.httpserver import KeepAliveWSGIServer
from xgrader.queue_server.store import Store


class QueueServer:
    """The whole server; usable in-process (tests) or from `xgrader queue serve`."""

    def __init__(self, config: QueueServerConfig) -> None:
        self.config = config
        self.store = Store(config.db)
        self.deliverer = Deliverer(self.store, tries=config.delivery_tries, backoff_s=config.delivery_backoff_s,
                                   timeout_s=config.delivery_timeout_s, workers=config.delivery_workers)
        self.app = QueueApp(config, self.store, on_result=self.deliverer.submit)
        self.httpd = KeepAliveWSGIServer(config.host, config.port, self.app)
        self.port = self.httpd.server_port
        self.url = f"http://{config.host}:{self.port}/xqueue/"
        self._thread: threading.Thread | None = None

    def start(self) -> "QueueServer":
        """Serve in a background thread."""
        self.deliverer.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="xq-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd.close_connections()
        if self._thread:
            self._thread.join(10)
        self.deliverer.stop()
        self.store.close()

    def serve_forever(self, out: IO[str] = sys.stdout) -> int:
        """Foreground: print the ready line, serve until SIGTERM/SIGINT."""
        stopping = threading.Event()

        def on_signal(signum, frame) -> None:
            if not stopping.is_set():
                stopping.set()
                # shutdown() waits for serve_forever to return: not from its own thread
                threading.Thread(target=self.httpd.shutdown, daemon=True).start()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.deliverer.start()
        print(f"xgrader queue listening on {self.url}", file=out, flush=True)
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.httpd.server_close()
            self.httpd.close_connections()
            self.deliverer.stop()
            self.store.close()
            for s, h in old.items():
                signal.signal(s, h)
        print("xgrader queue stopped", file=out, flush=True)
        return 0
