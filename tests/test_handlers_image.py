"""The image kind on real bwrap sandboxes: tolerance, size mismatches, the
difference image, and every bad image refused before decoding."""

from __future__ import annotations

import base64
import io
import struct
import textwrap
import xml.dom.minidom
import zlib

import pytest
from PIL import Image

from xgrader import feedback
from xgrader.handlers.image_compare import BadImage, decode
from xgrader.report import Outcome, TestStatus as Status

ASSIGNMENT = {
    "assignment.toml": """
        title = "Squares"
        kind = "image"
        entry = "draw.py"
        module = "draw"
        functions = ["square"]
        test_timeout_s = 2
        [image]
        output = "out.ppm"
        threshold = 3
        max_hot = 0.05
        max_pixels = 10000
        max_bytes = 100000
    """,
    "description.md": "square(n, path) writes an n x n PPM: white, with a red top-left quarter.",
    "solution/draw.py": """
        import sys

        def square(n, path):
            rows = []
            for y in range(n):
                for x in range(n):
                    rows.append(b"\\xff\\x00\\x00" if x < n // 2 and y < n // 2 else b"\\xff\\xff\\xff")
            with open(path, "wb") as f:
                f.write(b"P6\\n%d %d\\n255\\n" % (n, n) + b"".join(rows))

        if __name__ == "__main__":
            square(int(sys.stdin.read()), "out.ppm")
    """,
    "tests/cases.toml": """
        [[case]]
        name = "ten"
        expr = "square(10, 'out.ppm')"
        visible = true
        [[case]]
        name = "hidden twenty"
        expr = "square(20, 'out.ppm')"
        [[case]]
        name = "program"
        stdin = "8"
        visible = true
    """,
}

SOLUTION = textwrap.dedent(ASSIGNMENT["solution/draw.py"]).lstrip("\n")


@pytest.fixture(scope="module")
def images(kit):
    kit.add("squares", ASSIGNMENT)
    return kit


def test_the_reference_and_a_tolerated_difference_get_full_marks(images):
    assert images.grade("squares", SOLUTION).outcome is Outcome.passed
    # Channel values off by 2 (threshold 3): no hot pixel.
    report = images.grade("squares", SOLUTION.replace("\\xff\\xff\\xff", "\\xfd\\xfd\\xfd"))
    assert report.outcome is Outcome.passed, report


def test_hot_pixels_over_the_limit_fail_with_the_share_and_a_difference_image(images):
    wrong = SOLUTION.replace("x < n // 2 and y < n // 2", "x < n // 2")   # half the image red
    report = images.grade("squares", wrong)
    assert report.score == 0 and report.outcome is Outcome.failed
    ten = report.tests[0]
    assert ten.status is Status.failed
    assert ten.actual == "25 of 100 pixels differ by more than 3 in some channel: 25 %"
    assert "25 % (at most 5 % allowed)" in ten.message
    assert ten.image and ten.image.startswith("data:image/png;base64,")
    diff = Image.open(io.BytesIO(base64.b64decode(ten.image.split(",", 1)[1])))
    assert diff.format == "PNG" and max(diff.size) >= 48       # a 10x10 image is shown enlarged
    html = feedback.render_html(report)
    xml.dom.minidom.parseString(html)
    assert html.count("<img ") == 2 and 'src="data:image/png;base64,' in html
    assert report.tests[1].image is None and not report.tests[1].visible   # hidden: pass/fail only
    assert len(html) < 60_000


def test_a_few_hot_pixels_within_the_limit_pass(images):
    # One pixel of 100 differs (1 % <= 5 %).
    tweak = SOLUTION.replace('rows.append(', 'rows.append(b"\\x00\\x00\\x00" if (x, y) == (9, 9) else ')
    report = images.grade("squares", tweak)
    assert report.tests[0].status is Status.passed, report.tests[0]


def test_size_mismatch_is_explained(images):
    report = images.grade("squares", SOLUTION.replace("% (n, n)", "% (n, n - 1)").replace(
        "for y in range(n):", "for y in range(n - 1):"))
    ten = report.tests[0]
    assert "Your image is 10×9 pixels" in ten.message and "expected image is 10×10" in ten.message
    assert any(e.title == "Wrong image size in a hidden test" for e in report.explanations)


def test_program_cases_write_png_too(images):
    # The program writes PNG bytes under out.ppm: the format comes from the bytes, not the name.
    code = SOLUTION.replace('square(int(sys.stdin.read()), "out.ppm")', 'png(int(sys.stdin.read()), "out.ppm")') + """
import struct, zlib

def png(n, path):
    raw = b"".join(b"\\x00" + b"".join(b"\\xff\\x00\\x00" if x < n // 2 and y < n // 2 else b"\\xff\\xff\\xff"
                                       for x in range(n)) for y in range(n))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    with open(path, "wb") as f:
        f.write(b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", n, n, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
"""
    # Defined after the main block runs: move the block to the end.
    main = 'if __name__ == "__main__":\n    png(int(sys.stdin.read()), "out.ppm")\n'
    code = code.replace(main, "") + "\n" + main
    report = images.grade("squares", code)
    assert report.tests[2].status is Status.passed, report.tests[2]
    assert report.outcome is Outcome.passed


HOSTILE = {
    # A PPM header declaring 30000 x 30000 pixels: refused from the header, nothing decoded.
    "huge header": ('open(path, "wb").write(b"P6\\n30000 30000\\n255\\n" + b"\\0" * 300)', "pixels are allowed"),
    # PNG whose IHDR claims 20000 x 20000: a decompression bomb, refused before decoding.
    "png bomb": ('import struct, zlib\n'
                 '    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))\n'
                 '    open(path, "wb").write(b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))'
                 ' + chunk(b"IDAT", zlib.compress(b"\\0" * 1000000)) + chunk(b"IEND", b""))', "pixels are allowed"),
    "truncated": ('open(path, "wb").write(b"P6\\n10 10\\n255\\n" + b"\\xff" * 100)', "truncated or damaged"),
    "wrong format": ('open(path, "wb").write(b"GIF89a" + b"\\0" * 100)', "not a PNG or PPM image"),
    "text": ('open(path, "w").write("a red square, trust me")', "not a PNG or PPM image"),
    "symlink": ('import os\n    os.symlink("/etc/passwd", path)', "a symbolic link"),
    "fifo": ('import os\n    os.mkfifo(path)', "not a regular file"),
    "directory": ('import os\n    os.mkdir(path)', "not a regular file"),
    "too many bytes": ('open(path, "wb").write(b"P6\\n10 10\\n255\\n" + b"\\xff" * 200000)', "larger than the 100000 bytes"),
    "no file": ("pass", "did not write out.ppm"),
}


@pytest.mark.parametrize("attack", HOSTILE, ids=list(HOSTILE))
def test_bad_images_are_refused_with_a_clear_message(images, attack):
    body, expected = HOSTILE[attack]
    report = images.grade("squares", f"def square(n, path):\n    {body}\n")
    ten = report.tests[0]
    assert ten.status is Status.failed and report.score == 0
    assert expected in (ten.message or ""), ten.message
    xml.dom.minidom.parseString(feedback.render_html(report))


def test_decode_checks_before_decoding():
    with pytest.raises(BadImage, match="at most 50 pixels"):
        decode(b"P5\n100 100\n255\n", "x.pgm", max_pixels=50, max_bytes=10_000)
    with pytest.raises(BadImage, match="at most 10 are allowed"):
        decode(b"P6\n1 1\n255\n" + b"\0" * 20, "x.ppm", max_pixels=50, max_bytes=10)
    ok = io.BytesIO()
    Image.new("L", (3, 2), 7).save(ok, format="PNG")
    img = decode(ok.getvalue(), "x.png", max_pixels=6, max_bytes=10_000)
    assert img.mode == "RGBA" and img.size == (3, 2) and img.getpixel((0, 0)) == (7, 7, 7, 255)


def test_the_stdout_of_student_code_is_escaped(images):
    wrong = SOLUTION.replace("x < n // 2 and y < n // 2", "x < n // 2")
    report = images.grade("squares", wrong.replace("def square(n, path):\n",
                                                      "def square(n, path):\n    print('</pre><img src=x onerror=alert(1)>]]>')\n"))
    html = feedback.render_html(report)
    xml.dom.minidom.parseString(html)
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;]]&gt;" in html
