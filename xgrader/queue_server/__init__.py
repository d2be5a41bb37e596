"""The bundled xqueue-compatible queue server (`xgrader queue serve`)."""

from xgrader.queue_server.config import QueueServerConfig
from xgrader.queue_server.server import QueueServer
from xgrader.queue_server.store import Store

__all__ = ["QueueServer", "QueueServerConfig", "Store"]
