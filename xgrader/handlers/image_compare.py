"""Images on the trusted side: decoded with limits set before any pixel is
decoded, compared with a tolerance, and a small difference image for feedback.

Pillow (the `images` extra) does the decoding; only its PNG and PPM decoders
are ever tried. What an image file must pass, in order: its size in bytes, its
first bytes (PNG signature or a netpbm `P1`-`P6` header), the dimensions in
its header (Pillow reads only the header on open; more pixels than the
assignment allows are refused here, and Pillow's own decompression-bomb
ceiling is set to xgrader's hard maximum), then the full decode (a truncated
or damaged file is refused).
"""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass
from typing import Any

from xgrader.errors import AssignmentError
from xgrader.extras import MissingExtra, require
from xgrader.kind_config import HARD_MAX_PIXELS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Feedback: the difference image's longest side, and the most base64 it may take.
DIFF_SIDES = (96, 64, 48, 32)
DIFF_MIN_SIDE = 48
DIFF_BUDGET = 6000


class BadImage(ValueError):
    """An image that cannot be used; the message is for the student."""


def _pil() -> Any:
    try:
        Image = require("PIL.Image", "images")
    except MissingExtra as exc:  # the operator's to fix: one line naming the extra, answered at once
        raise AssignmentError(str(exc)) from None
    from PIL import PngImagePlugin
    # Process-wide ceilings of Pillow's (module attributes are its only API for
    # them); always the same values, so setting them again is harmless.
    Image.MAX_IMAGE_PIXELS = HARD_MAX_PIXELS
    PngImagePlugin.MAX_TEXT_CHUNK = 256 * 1024     # one (compressed) text chunk, decompressed
    PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024   # all text chunks of one file
    return Image


def sniff(data: bytes) -> str | None:
    """Pillow's format id from the first bytes: PNG or PPM (netpbm P1-P6)."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if len(data) >= 3 and data[:1] == b"P" and data[1:2] in b"123456" and data[2:3] in b" \t\r\n#":
        return "PPM"
    return None


def decode(data: bytes, name: str, max_pixels: int, max_bytes: int) -> Any:
    """An RGBA Pillow image, or BadImage saying what is wrong with `name`."""
    if len(data) > max_bytes:
        raise BadImage(f"{name} is {len(data)} bytes; at most {max_bytes} are allowed.")
    fmt = sniff(data)
    if fmt is None:
        raise BadImage(f"{name} is not a PNG or PPM image (its first bytes are not a PNG signature "
                       "or a P1-P6 header).")
    Image = _pil()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=[fmt])  # the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadImage(f"{name} declares a huge image (over {HARD_MAX_PIXELS} pixels); "
                           f"at most {max_pixels} pixels are allowed.") from None
        except Exception:  # noqa: BLE001  (any header a decoder rejects)
            raise BadImage(f"{name} is not a valid {fmt} image (its header cannot be read).") from None
        width, height = img.size
        if width <= 0 or height <= 0 or width * height > max_pixels:
            raise BadImage(f"{name} is {width}×{height} = {width * height} pixels; "
                           f"at most {max_pixels} pixels are allowed.")
        try:
            img.load()
            return img.convert("RGBA")
        except Exception:  # noqa: BLE001  (truncated data, bad checksums, damaged streams)
            raise BadImage(f"{name} is truncated or damaged: its {width}×{height} pixels "
                           "could not be read.") from None


def to_png(img: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


@dataclass(frozen=True)
class Comparison:
    same_size: bool
    actual_size: tuple[int, int]
    expected_size: tuple[int, int]
    hot: int = 0
    total: int = 0
    mask: Any = None          # "L" image: 255 where a pixel is hot

    @property
    def share(self) -> float:
        return self.hot / self.total if self.total else 1.0


def compare(actual: Any, expected: Any, threshold: int) -> Comparison:
    """Hot pixels: some channel (R, G, B or A) differs by more than `threshold`."""
    if actual.size != expected.size:
        return Comparison(False, actual.size, expected.size)
    _pil()
    from PIL import ImageChops
    diff = ImageChops.difference(actual, expected)
    lut = [0] * (threshold + 1) + [255] * (255 - threshold)
    bands = [band.point(lut) for band in diff.split()]
    mask = bands[0]
    for band in bands[1:]:
        mask = ImageChops.lighter(mask, band)
    hot = mask.histogram()[255]
    width, height = actual.size
    return Comparison(True, actual.size, expected.size, hot=hot, total=width * height, mask=mask)


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def size_mismatch(c: Comparison) -> str:
    text = (f"Your image is {size_text(c.actual_size)} pixels (width×height); "
            f"the expected image is {size_text(c.expected_size)}.")
    if c.actual_size == c.expected_size[::-1]:
        text += " Width and height look swapped."
    return text


def diff_data_uri(expected: Any, c: Comparison) -> str | None:
    """A small PNG, generated here from the expected image and the hot-pixel
    mask (never from student bytes as such): the expected image dimmed to grey,
    hot pixels red. None when it does not fit the feedback budget."""
    if not c.same_size or c.mask is None:
        return None
    Image = _pil()
    width, height = expected.size
    base = expected.convert("L").point(lambda v: 96 + v // 3).convert("RGB")
    red = Image.new("RGB", expected.size, (230, 0, 0))
    longest = max(width, height)
    for side in DIFF_SIDES:
        # Tiny images grow by a whole factor (crisp pixels), others shrink to `side`.
        scale = float(-(-DIFF_MIN_SIDE // longest)) if longest < DIFF_MIN_SIDE else min(1.0, side / longest)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
        # A hot pixel stays visible when scaled down: any hot share in a cell marks it.
        mask = c.mask.resize(size, resample).point(lambda v: 255 if v else 0)
        small = Image.composite(red.resize(size, resample), base.resize(size, resample), mask)
        uri = "data:image/png;base64," + base64.b64encode(to_png(small)).decode("ascii")
        if len(uri) <= DIFF_BUDGET:
            return uri
    return None
