"""xgrader: an xqueue-compatible external grader daemon."""

__version__ = "0.1.0"
