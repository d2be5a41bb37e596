"""Reference solution: a sunset as PPM (draw_sunset) or PNG (run as a program)."""

import struct
import sys
import zlib

TOP = (20, 30, 90)
BOTTOM = (250, 150, 60)
SUN = (255, 220, 80)


def pixels(width, height):
    """Rows of (r, g, b) tuples."""
    cx, cy, r = width / 2, 0.6 * height, min(width, height) / 5
    rows = []
    for y in range(height):
        t = y / (height - 1) if height > 1 else 0
        sky = tuple(round(a + (b - a) * t) for a, b in zip(TOP, BOTTOM))
        row = []
        for x in range(width):
            inside = (x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 <= r * r
            row.append(SUN if inside else sky)
        rows.append(row)
    return rows


def draw_sunset(width, height, path):
    data = bytearray(b"P6\n%d %d\n255\n" % (width, height))
    for row in pixels(width, height):
        for rgb in row:
            data += bytes(rgb)
    with open(path, "wb") as f:
        f.write(data)


def write_png(path, rows):
    height, width = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + b"".join(bytes(p) for p in row) for row in rows)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                + chunk(b"IEND", b""))


if __name__ == "__main__":
    w, h = (int(v) for v in sys.stdin.read().split())
    write_png("sunset.png", pixels(w, h))
