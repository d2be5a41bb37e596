"""The pull-loop daemon: a parent that pulls, supervises and posts, one
forked child per submission that grades and reports (see docs/architecture.md)."""

from xgrader.daemon.loop import Daemon  # noqa: F401
