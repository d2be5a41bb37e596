"""The fd-pipe Channel: newline-delimited JSON over a pair of pipes.

Reused by every backend that can hand the sandbox inherited descriptors
(bwrap, unsafe). Everything received is untrusted: lines are capped at
MAX_LINE bytes and JSON nesting at MAX_DEPTH *before* the data is used.
"""

from __future__ import annotations

import json
import os
import re
import select
import time
from typing import Any

from xgrader.backends.base import Channel, ChannelError

MAX_LINE = 4 * 1024 * 1024
MAX_DEPTH = 64


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise ChannelError when `value` nests deeper than `limit` (iterative: no recursion bomb)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise ChannelError(f"message nested deeper than {limit}")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")


def _bracket_depth_ok(line: bytes, limit: int) -> bool:
    """Whether the brackets outside strings nest at most `limit` deep, so
    json.loads never recurses on a hostile 4 MiB of '[' and the value it
    builds is no deeper than that. All in C-speed passes (a per-byte Python
    loop cost ~2 ms on a 25 KB reply): strings removed, then every bracket
    pair with nothing inside removed once per level. Unbalanced input stops
    early; json.loads refuses it."""
    if b'\\"' in line:  # an escaped quote (or an escaped backslash before one): parse strings
        outside = _JSON_STRING.sub(b"", line)
    else:  # every quote delimits a string: the even pieces are outside strings
        outside = b"".join(line.split(b'"')[::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return True
        brackets, removed = _INNERMOST.subn(b"", brackets)
        if not removed:
            return True
    return not brackets


def decode_message(line: bytes) -> Any:
    if len(line) > MAX_LINE:
        raise ChannelError(f"message line over {MAX_LINE} bytes")
    # MAX_DEPTH - 1 bracket levels: check_depth's MAX_DEPTH counts the
    # scalars inside the innermost container as one more level.
    if not _bracket_depth_ok(line, MAX_DEPTH - 1):
        raise ChannelError(f"message nested deeper than {MAX_DEPTH}")
    try:
        return json.loads(line)  # no deeper than checked: no check_depth walk over it
    except (ValueError, RecursionError) as exc:
        raise ChannelError(f"not a JSON message: {type(exc).__name__}") from None


class FdChannel(Channel):
    """Host side of the pipes: we write requests to `write_fd`, read replies from `read_fd`."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._r = read_fd
        self._w = write_fd
        self._buf = bytearray()
        self._eof = False

    def send(self, message: Any) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._w, view)
                view = view[n:]
        except OSError as exc:
            raise ChannelError(f"peer went away: {exc.strerror}") from None

    def recv(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return decode_message(line)
            if len(self._buf) > MAX_LINE:
                raise ChannelError(f"message line over {MAX_LINE} bytes")
            if self._eof:
                raise ChannelError("channel closed by the sandbox")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the sandbox in time")
            ready, _, _ = select.select([self._r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._r, 65536)
            if not chunk:
                self._eof = True
            self._buf += chunk

    def pending(self) -> bool:
        return b"\n" in self._buf

    @property
    def read_fd(self) -> int:
        return self._r

    @property
    def write_fd(self) -> int:
        return self._w

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


def make_pipes() -> tuple[FdChannel, int, int]:
    """(host channel, child's read fd, child's write fd); the child fds go to fds 3 and 4."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    return FdChannel(from_child_r, to_child_w), to_child_r, from_child_w
