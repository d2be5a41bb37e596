"""The fd-pipe Channel: newline-delimited JSON over a pair of pipes.

Reused by every backend that can hand the sandbox inherited descriptors
(bwrap, unsafe). Everything received is untrusted: lines are capped at
MAX_LINE bytes and JSON nesting at MAX_DEPTH *before* the data is used.
"""

from __future__ import annotations

import json
import os
import select
import time
from typing import Any

from xgrader.sandbox.base import Channel, ChannelError

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


def _bracket_depth_ok(line: bytes, limit: int) -> bool:
    # Cheap pre-scan so json.loads never recurses on a hostile 4 MiB of '['.
    depth = 0
    in_str = esc = False
    for b in line:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


def decode_message(line: bytes) -> Any:
    if len(line) > MAX_LINE:
        raise ChannelError(f"message line over {MAX_LINE} bytes")
    if not _bracket_depth_ok(line, MAX_DEPTH):
        raise ChannelError(f"message nested deeper than {MAX_DEPTH}")
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ChannelError(f"not a JSON message: {type(exc).__name__}") from None
    check_depth(value)
    return value


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
