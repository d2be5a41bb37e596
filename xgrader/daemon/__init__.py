"""The pull-loop daemon: a parent that pulls and supervises, one forked child
per submission that grades and posts (see docs/architecture.md)."""

from xgrader.daemon.loop import Daemon  # noqa: F401
