"""Submission forms -> sandbox files: text, uploads, zip (with every attack from
the brief), Jupyter notebooks with magics, marimo notebooks, the entry file,
and one notebook graded end to end on the bwrap backend."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.grading import GradingKit
from xgrader.assignment import Assignment, AssignmentConfig, SubmissionOptions
from xgrader.errors import SubmissionError
from xgrader.job import GradeRequest
from xgrader.report import Outcome
from xgrader.submissions import materialize


def _assignment(**submission) -> Assignment:
    cfg = AssignmentConfig(title="t", kind="io", submission=SubmissionOptions(**submission))
    return Assignment(name="t", root=Path("."), config=cfg, tests={})


def _files(response: str = "", files: dict[str, bytes] | None = None, **submission) -> dict[str, bytes]:
    return materialize(GradeRequest(grader="t", student_response=response, files=files or {}),
                       _assignment(**submission))


def _zip(entries: dict[str, bytes | str], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _zip_with_mode(name: str, mode: int, data: bytes = b"/etc/passwd") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("submission.py", "x = 1\n")
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = mode << 16
        zf.writestr(info, data)
    return buf.getvalue()


def _rejected(match: str, **kw) -> str:
    with pytest.raises(SubmissionError, match=match) as exc:
        _files(**kw)
    return str(exc.value)


# ------------------------------------------------------------- text, uploads

def test_text_becomes_the_entry_file() -> None:
    assert _files("def f():\n    return 1\n") == {"submission.py": b"def f():\n    return 1\n"}


def test_empty_submission_is_a_clear_error() -> None:
    _rejected("empty", response="   \n")


def test_single_upload_under_another_name_becomes_the_entry() -> None:
    assert _files(files={"my_homework.py": b"x = 1\n"}) == {"submission.py": b"x = 1\n"}


def test_multiple_uploads_keep_their_names() -> None:
    got = _files(files={"submission.py": b"from helper import h\n", "helper.py": b"def h(): pass\n",
                        "data/words.txt": b"a b\n"})
    assert set(got) == {"submission.py", "helper.py", "data/words.txt"}


def test_multiple_uploads_without_the_entry_name_it() -> None:
    msg = _rejected("submission.py", files={"a.py": b"", "b.py": b""})
    assert "'a.py', 'b.py'" in msg


def test_text_and_uploads_together() -> None:
    got = _files("import helper\n", files={"helper.py": b"X = 2\n"})
    assert got == {"submission.py": b"import helper\n", "helper.py": b"X = 2\n"}


@pytest.mark.parametrize("name", ["../evil.py", "/etc/passwd", "a\\b.py", "a\x00.py", "a\nb.py", "C:x.py",
                                  "x/../../y.py", "", " a.py", "a//b.py"])
def test_unsafe_upload_names_are_rejected(name: str) -> None:
    _rejected("file name", files={name: b"x = 1\n"})


def test_upload_budget() -> None:
    _rejected("larger than the allowed 2048 bytes", files={"submission.py": b"#" * 3000}, max_bytes=2048)


# ------------------------------------------------------------------------ zip

def test_zip_project_is_extracted_with_common_folder_stripped() -> None:
    data = _zip({"project/submission.py": "from lib.util import f\n", "project/lib/util.py": "def f(): return 1\n",
                 "project/lib/": b"", "__MACOSX/project/._submission.py": b"junk",
                 "project/.DS_Store": b"junk", "project/__pycache__/x.pyc": b"junk"})
    assert _files(files={"project.zip": data}) == {
        "submission.py": b"from lib.util import f\n", "lib/util.py": b"def f(): return 1\n"}


def test_zip_with_one_py_under_another_name() -> None:
    assert _files(files={"hw.zip": _zip({"hw/answer.py": "x = 1\n"})}) == {"submission.py": b"x = 1\n"}


@pytest.mark.parametrize("name,match", [
    ("../../evil.py", r"'\.\.'"),               # zip-slip
    ("ok/../../evil.py", r"'\.\.'"),
    ("/etc/cron.d/evil", "absolute"),
    ("..\\evil.py", "backslash"),
    ("C:/evil.py", "colon"),
    ("a" * 300 + ".py", "longer than 200"),
    ("/".join(["d"] * 12) + "/x.py", "too many folder levels"),
])
def test_zip_unsafe_names_are_rejected(name: str, match: str) -> None:
    _rejected(match, files={"s.zip": _zip({"submission.py": "x = 1\n", name: "boom"})})


@pytest.mark.parametrize("char", [b"\x00", b"\n"])
def test_zip_names_with_nul_or_newline_are_rejected(char: bytes) -> None:
    # zipfile will not write such names: patch them into the archive's bytes.
    data = _zip({"submission.py": "x = 1\n", "evilXname.py": "boom"}).replace(b"evilXname", b"evil" + char + b"name")
    _rejected("control character", files={"s.zip": data})


@pytest.mark.parametrize("mode,match", [
    (stat.S_IFLNK | 0o777, "symbolic link"),
    (stat.S_IFCHR | 0o666, "special file"),
    (stat.S_IFBLK | 0o666, "special file"),
    (stat.S_IFIFO | 0o666, "special file"),
    (stat.S_IFSOCK | 0o666, "special file"),
])
def test_zip_links_and_devices_are_rejected(mode: int, match: str) -> None:
    _rejected(match, files={"s.zip": _zip_with_mode("link.py", mode)})


def test_zip_duplicate_names_hardlink_like_are_rejected() -> None:
    with pytest.warns(UserWarning):   # zipfile itself warns when writing it
        data = _dup_zip()
    _rejected("twice", files={"s.zip": data})
    _rejected("twice", files={"s.zip": _zip({"submission.py": "x = 1\n", "Helper.py": "", "helper.py": ""})})


def _dup_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("submission.py", "x = 1\n")
        zf.writestr("submission.py", "import os; os.system('evil')\n")
    return buf.getvalue()


def test_zip_bomb_is_stopped_by_bytes_actually_read() -> None:
    bomb = _zip({"submission.py": b"\0" * 50_000_000})
    assert len(bomb) < 100_000
    _rejected("larger than the allowed 5000000 bytes", files={"bomb.zip": bomb})


def _set_uncompressed_size(data: bytes, header: bytes, size: int) -> bytes:
    """Rewrite the uncompressed-size field of the first local (PK\\3\\4) or central (PK\\1\\2) header."""
    at = data.index(header) + {b"PK\x03\x04": 22, b"PK\x01\x02": 24}[header]
    return data[:at] + size.to_bytes(4, "little") + data[at + 4:]


def test_zip_bomb_with_lying_header_sizes() -> None:
    """20 MB of zeros (~20 KB compressed) whose local header claims 10 bytes:
    a reader that trusted it would let the bomb through. Only the bytes really
    decompressed count, and the budget stops the read (with the budget check
    removed, the whole 20 MB would be accepted: this test would fail)."""
    data = _zip({"submission.py": b"\0" * 20_000_000})
    assert len(data) < 100_000
    data = _set_uncompressed_size(data, b"PK\x03\x04", 10)
    message = _rejected("larger than the allowed 5000000 bytes", files={"bomb.zip": data}, max_bytes=5_000_000)
    assert "bomb.zip" in message


def test_zip_entry_longer_than_both_headers_claim_is_rejected() -> None:
    """Both headers claim 10 bytes of a 20 MB entry: zipfile stops at the claim,
    and the truncated content must not pass as the file (its CRC fails)."""
    data = _zip({"submission.py": b"\0" * 20_000_000})
    for header in (b"PK\x03\x04", b"PK\x01\x02"):
        data = _set_uncompressed_size(data, header, 10)
    _rejected("cannot be read", files={"bomb.zip": data})


def test_stored_zip_counts_its_content_once() -> None:
    data = _zip({"submission.py": b"#" * 3000}, method=zipfile.ZIP_STORED)
    assert len(data) > 3000
    assert _files(files={"s.zip": data}, max_bytes=4000) == {"submission.py": b"#" * 3000}
    _rejected("zip archive 's.zip' is larger", files={"s.zip": data}, max_bytes=2048)


def test_zip_too_many_files() -> None:
    entries = {"submission.py": "x = 1\n"} | {f"f{i}.txt": "x" for i in range(30)}
    _rejected("more than the allowed 20 files", files={"s.zip": _zip(entries)}, max_files=20)


def test_zip_encrypted_entry_is_rejected() -> None:
    # zipfile cannot encrypt: set the "encrypted" flag bit in both headers.
    data = bytearray(_zip({"submission.py": "x = 1\n"}))
    for magic, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.index(magic) + offset] |= 0x1
    _rejected("encrypted", files={"s.zip": bytes(data)})


def test_not_a_zip() -> None:
    _rejected("cannot be opened", files={"s.zip": b"this is not a zip"})


def test_zip_crc_error_is_a_clear_message() -> None:
    data = _zip({"submission.py": "x = 1\n" * 10}, method=zipfile.ZIP_STORED).replace(b"x = 1\n" * 10, b"y = 2\n" * 10)
    _rejected("cannot be read", files={"s.zip": data})


# ------------------------------------------------------------------ notebooks

def _nb(*cells: tuple[str, str]) -> bytes:
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": kind, "metadata": {}, "source": src,
         **({"outputs": [], "execution_count": None} if kind == "code" else {})}
        for kind, src in cells]}).encode()


NOTEBOOK = _nb(
    ("markdown", "# Homework 1\nWrite `add`."),
    ("code", "%matplotlib inline\nimport math\n!pip install requests\nfiles = !ls\n"),
    ("code", "def add(a, b):\n    return a + b\n"),
    ("code", "%%bash\necho hi\n"),
    ("code", "%%time\ndef area(r):\n    return math.pi * r * r\n"),
    ("code", "%timeit add(1, 2)\ndisplay(add(1, 2))\n"),
)


def _load(code: bytes) -> dict:
    namespace: dict = {}
    exec(compile(code, "submission.py", "exec"), namespace)   # noqa: S102 - our own fixture
    return namespace


def test_ipynb_code_cells_with_magics_become_an_importable_module(capsys) -> None:
    got = _files(files={"homework.ipynb": NOTEBOOK})
    assert list(got) == ["submission.py"]
    capsys.readouterr()   # drop the log line
    ns = _load(got["submission.py"])
    assert ns["add"](2, 3) == 5 and round(ns["area"](1), 4) == 3.1416
    assert capsys.readouterr().out == "3\n"   # display() prints outside Jupyter
    assert b"# %%bash" in got["submission.py"] and b"Homework" not in got["submission.py"]


WRITEFILE_NOTEBOOK = _nb(
    ("code", "%%writefile helper.py\ndef add(a, b):\n    return a + b\n"),
    ("code", "%%writefile -a helper.py\nimport math\ndef area(r):\n    return math.pi * r * r\n"),
    ("code", "from helper import add, area\n"),
)


def test_writefile_cells_add_their_files() -> None:
    got = _files(files={"hw.ipynb": WRITEFILE_NOTEBOOK})
    assert set(got) == {"submission.py", "helper.py"}
    assert got["helper.py"] == (b"def add(a, b):\n    return a + b\n\n"
                                b"import math\ndef area(r):\n    return math.pi * r * r\n\n")
    assert b"from helper import add, area" in got["submission.py"]
    assert b"# %%writefile helper.py" in got["submission.py"]
    _rejected("contains '..'", files={"hw.ipynb": _nb(("code", "%%writefile ../x.py\nx = 1\n"))})


def test_pasted_notebook_json_is_converted() -> None:
    got = _files(NOTEBOOK.decode())
    assert _load(got["submission.py"])["add"](1, 1) == 2


@pytest.mark.parametrize("data", [b"{not json", b'{"cells": 3}', b"\xff\xfe", b'{"nbformat": 4, "cells": [{}]}'])
def test_broken_notebook_is_a_clear_error(data: bytes) -> None:
    _rejected("notebook 'hw.ipynb' cannot be read", files={"hw.ipynb": data})


def test_notebook_inside_zip_with_helper() -> None:
    data = _zip({"hw/main.ipynb": NOTEBOOK, "hw/helper.py": "X = 1\n"})
    got = _files(files={"hw.zip": data})
    assert set(got) == {"submission.py", "helper.py"} and b"def add" in got["submission.py"]


MARIMO = '''\
import marimo

__generated_with = "0.10.0"
app = marimo.App(width="medium")

with app.setup:
    import math
    import marimo as mo


@app.cell(hide_code=True)
def _(mo):
    mo.md("# Primes")
    return


@app.function
def is_prime(n: int) -> bool:
    """True for primes."""
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


@app.function(hide_code=True)
def primes_below(n):
    return [k for k in range(n) if is_prime(k)]


@app.cell
def _():
    from functools import lru_cache
    LIMIT = 10
    @lru_cache
    def twice(x):
        return 2 * x
    print("side effect")
    return LIMIT, twice


@app.class_definition
class Counter:
    def __init__(self):
        self.n = 0


@app.cell
def _(primes_below):
    primes_below(20)
    return


if __name__ == "__main__":
    app.run()
'''


def test_marimo_notebook_imports_without_marimo(tmp_path: Path) -> None:
    got = _files(files={"primes_nb.py": MARIMO.encode()})
    assert list(got) == ["submission.py"] and b"marimo" not in got["submission.py"].split(b"\n", 1)[1]
    (tmp_path / "submission.py").write_bytes(got["submission.py"])
    probe = ("import sys; sys.modules['marimo'] = None\n"   # make sure marimo cannot be imported
             "from submission import is_prime, primes_below, twice, LIMIT, Counter\n"
             "print(primes_below(20), twice(4), LIMIT, Counter().n)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[2, 3, 5, 7, 11, 13, 17, 19] 8 10 0\n"   # no "side effect" printed


def test_marimo_with_syntax_error_is_left_for_the_normal_explanation() -> None:
    broken = MARIMO.replace("return all(", "return all((")
    assert _files(broken) == {"submission.py": broken.encode()}


@pytest.mark.parametrize("text", [
    '{"nbformat": 4, "cells": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "import marimo\napp = marimo.App()\n@app.function\ndef f():\n    return " + "-" * 100_000 + "1\n",
])
def test_pathological_nesting_is_kept_as_text_not_a_crash(text: str) -> None:
    assert _files(text) == {"submission.py": text.encode()}


def test_deeply_nested_notebook_file_is_a_clear_error() -> None:
    _rejected("cannot be read", files={"n.ipynb": b'{"cells": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"})


def test_plain_python_mentioning_marimo_is_untouched() -> None:
    code = "# not marimo: import marimo\napp = 1\n"
    assert _files(code) == {"submission.py": code.encode()}


# ------------------------------------------------------------- end to end

def test_notebook_and_zip_graded_end_to_end_on_bwrap(kit: GradingKit) -> None:
    kit.add("nb_add", {
        "assignment.toml": 'title = "Add"\nkind = "io"\nmax_points = 3\nfunctions = ["add", "area"]\n',
        "tests/cases.toml": """
            [[case]]
            expr = "add(2, 3)"
            visible = true
            [[case]]
            expr = "add(-1, 1)"
            [[case]]
            expr = "round(area(2), 3)"
        """,
        "solution/submission.py": "import math\ndef add(a, b):\n    return a + b\n"
                                  "def area(r):\n    return math.pi * r * r\n",
    })
    report = kit.grade("nb_add", files={"homework.ipynb": NOTEBOOK})
    assert report.outcome is Outcome.passed and report.score == 3, report
    wrong = NOTEBOOK.replace(b"return a + b", b"return a - b")
    report = kit.grade("nb_add", files={"hw.zip": _zip({"hw/homework.ipynb": wrong})})
    assert report.outcome is Outcome.partial and report.score == 1, report
    report = kit.grade("nb_add", files={"hw.ipynb": WRITEFILE_NOTEBOOK})
    assert report.outcome is Outcome.passed and report.score == 3, report
    report = kit.grade("nb_add", MARIMO_ADD)
    assert report.outcome is Outcome.passed and report.score == 3, report
    report = kit.grade("nb_add", files={"add_nb.py": MARIMO_ADD.replace("a + b", "a * b").encode()})
    assert report.outcome is Outcome.partial and report.score == 1, report


MARIMO_ADD = """\
import marimo

app = marimo.App()

with app.setup:
    import math


@app.function
def add(a, b):
    return a + b


@app.function
def area(r):
    return math.pi * r * r


if __name__ == "__main__":
    app.run()
"""


def test_corrupted_zips_fail_only_with_submission_error() -> None:
    """Seeded byte flips of a real archive: every outcome is files or a SubmissionError."""
    import random
    rng = random.Random(1234)
    base = _zip({"proj/submission.py": "def f():\n    return 1\n" * 20, "proj/data.txt": "x" * 500,
                 "proj/nb.ipynb": NOTEBOOK})
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            _files(files={"p.zip": bytes(data)})
            outcomes["ok"] += 1
        except SubmissionError:
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 0
