"""Attacks through the real grading path (Grader / pipeline.grade_request ->
handlers -> sandboxes) on tests/attacks/assignments: forging the verdict,
reading the answers, hostile uploads, feedback injection, payload abuse.

Every forging or answer-reading attack is written so that it earns full marks
only if it works; the real score is 0. Canary strings sit in the hidden tests
and the reference solution and must appear in no report, rendered feedback
or reply. The attacks spell canaries reversed, so their own source (which
feedback may quote) never matches."""

import io
import os
import stat
import xml.etree.ElementTree as ET
import zipfile

import pytest

from tests.attacks.conftest import leaks, report_texts
from xgrader.report import Outcome

KINDS = ["vault", "vault_io"]
HONEST = "def double(n):\n    return 2 * n\n"

# Runs at import in the student's module: looks for the answers everywhere it
# can; `double` is only right if something was found.
SEARCH = '''
import os, sys, time
NEEDLES = [s[::-1].encode() for s in ("55e20c_STSET_YRANAC", "19a3f7_NOITULOS_YRANAC")]
FOUND = []
def _scan(path):
    try:
        with open(path, "rb") as f:
            data = f.read(1_000_000)
    except OSError:
        return
    if any(n in data for n in NEEDLES):
        FOUND.append(path)
_stop = time.monotonic() + 0.6  # stay under the per-call timeout: the search must finish to count
# Where the grader's own code lies first (the runner's folder's ancestors), then everything.
_near = {os.path.dirname(os.path.dirname(os.path.abspath(p))) for p in sys.path if p.startswith("/")}
_tops = sorted(_near - {"/"}) + ["/" + t for t in sorted(os.listdir("/"))]
for top in _tops:
    if top in ("/proc", "/sys", "/usr", "/dev") or top.startswith("/usr/") or os.path.islink(top):
        continue
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("node_modules", "site-packages", "pypi", "pypi-more")]
        if "tests" in dirs or "solution" in dirs or root.endswith(("tests", "solution")) or root.startswith("/tmp"):
            for f in files:
                _scan(os.path.join(root, f))
        for f in files:
            if f in ("test_vault.py", "cases.toml", "submission.py"):
                _scan(os.path.join(root, f))
        if time.monotonic() > _stop:
            break
for mod in ("solution", "solution.submission", "test_vault", "tests.test_vault", "conftest"):
    try:
        __import__(mod); FOUND.append(mod)
    except BaseException:
        pass
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    _scan(f"/proc/{pid}/cmdline"); _scan(f"/proc/{pid}/environ")
'''

FORGED_JSON = ('{"correct": true, "score": 4, "msg": "all passed"}\\n'
               '{"id": 1, "ok": true, "value": 2}\\n{"op": "done"}\\n'
               '{"op": "result", "nodeid": "tests/test_vault.py::test_double[1]", "outcome": "passed"}\\n'
               '4 passed in 0.01s\\n')

FORGERIES = {
    "fake_report_then_exit_at_import": f"import os, sys\nsys.stdout.write('{FORGED_JSON}'); sys.stdout.flush()\nos._exit(0)\n"
                                        "def double(n):\n    return 2 * n\n",
    "exit_inside_the_call": "import os\ndef double(n):\n    print('{\"correct\": true}')\n    os._exit(0)\n",
    "atexit_summary": f"import atexit, sys\natexit.register(lambda: sys.stdout.write('{FORGED_JSON}'))\n"
                      "def double(n):\n    return 0\n",
    "write_every_inherited_fd": f"import os\nfor fd in range(0, 64):\n    try: os.write(fd, b'{FORGED_JSON}')\n"
                                "    except OSError: pass\ndef double(n):\n    return 0\n",
    "always_equal_object": "class Any:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n"
                           "    def __hash__(self): return 0\ndef double(n):\n    return Any()\n",
    "int_subclass_always_equal": "class Int(int):\n    def __eq__(self, other): return True\n    __hash__ = int.__hash__\n"
                                 "def double(n):\n    return Int(0)\n",
    "patch_builtins_and_modules": "import builtins, sys, json\nbuiltins.__dict__['AssertionError'] = type('Nope', (Exception,), {})\n"
                                  "json.dumps = lambda *a, **k: '{\"ok\": true, \"value\": 2}'\n"
                                  "sys.modules['pytest'] = None\nbuiltins.isinstance = lambda *a: True\n"
                                  "def double(n):\n    return 0\n",
    "raise_systemexit_zero": "def double(n):\n    raise SystemExit(0)\n",
    "search_for_answers": SEARCH + "def double(n):\n    return 2 * n if FOUND else 0\n",
}

SHIPPED = {
    "conftest.py": b"import pytest\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
                   b"    outcome = yield\n    outcome.get_result().outcome = 'passed'\n",
    "pytest.ini": b"[pytest]\naddopts = -p no:terminal\npython_files = nothing_*.py\n",
    "sitecustomize.py": b"import builtins\nbuiltins.double = lambda n: 2 * n\n",
    "json.py": b"def dumps(*a, **k): return '{\"ok\": true, \"value\": 2}'\ndef loads(*a, **k): return {}\n",
    "evil.pth": b"import os; os.environ['PYTEST_ADDOPTS'] = '--co'\n",
    "usercustomize.py": b"import sys; sys.exit(0)\n",
}


@pytest.mark.parametrize("kind", KINDS)
def test_honest_baseline(attack_grader, kind):
    report = attack_grader.grade(kind, HONEST)
    assert report.outcome is Outcome.passed and report.score == report.max_score == 4, report
    assert not leaks(*report_texts(report))


@pytest.mark.parametrize("attack", sorted(FORGERIES))
@pytest.mark.parametrize("kind", KINDS)
def test_forging_and_reading_answers(attack_grader, kind, attack):
    report, reply = attack_grader.pipeline(kind, FORGERIES[attack])
    assert report.score == 0 and not report.correct and reply.score == 0 and reply.correct is False, report
    assert report.outcome is not Outcome.error, report  # graded, not a grader failure
    assert not leaks(*report_texts(report, reply))


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_framework_files(attack_grader, kind):
    """conftest.py, pytest.ini, sitecustomize, a json.py shadow, .pth: uploaded
    beside a wrong submission, none changes the real score."""
    files = {"submission.py": b"def double(n):\n    return 0\n", **SHIPPED}
    report, reply = attack_grader.pipeline(kind, files=files)
    assert report.score == 0 and not report.correct, report
    assert not leaks(*report_texts(report, reply))


def _zip(entries: list[tuple[str, bytes, int | None]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


UPLOADS = {
    "zip_slip": lambda: {"sub.zip": _zip([("submission.py", HONEST.encode(), None),
                                          ("../../xgrader_zip_slip.py", b"owned", None)])},
    "zip_absolute": lambda: {"sub.zip": _zip([("submission.py", HONEST.encode(), None),
                                              ("/tmp/xgrader_zip_abs.py", b"owned", None)])},
    "zip_symlink": lambda: {"sub.zip": _zip([("submission.py", HONEST.encode(), None),
                                             ("link", b"/etc/shadow", stat.S_IFLNK | 0o777)])},
    "zip_bomb": lambda: {"sub.zip": _zip([("submission.py", HONEST.encode(), None),
                                          ("zeros.bin", b"\0" * (60 * 2**20), None)])},
    "nul_in_name": lambda: {"submission.py\0.txt": HONEST.encode()},
    "newline_in_name": lambda: {"a\nb.py": HONEST.encode(), "submission.py": HONEST.encode()},
    "absolute_upload_name": lambda: {"/etc/cron.d/xgrader": HONEST.encode()},
    "dotdot_upload_name": lambda: {"../submission.py": HONEST.encode()},
    "too_many_files": lambda: {f"f{i}.txt": b"x" for i in range(150)} | {"submission.py": HONEST.encode()},
}


@pytest.mark.parametrize("upload", sorted(UPLOADS))
def test_hostile_uploads(attack_grader, upload, tmp_path):
    cwd = os.getcwd()
    report, reply = attack_grader.pipeline("vault", files=UPLOADS[upload]())
    assert report.outcome is Outcome.bad_submission and report.score == 0, report
    assert report.explanations and report.explanations[0].detail, report
    for p in ("/tmp/xgrader_zip_abs.py", os.path.join(cwd, "..", "..", "xgrader_zip_slip.py"),
              os.path.join(cwd, "xgrader_zip_slip.py")):
        assert not os.path.exists(p)
    _well_formed(reply.msg)


def _well_formed(msg: str) -> ET.Element:
    """The LMS shows msg as HTML: it must parse as XML and hold no active markup."""
    root = ET.fromstring(f"<root>{msg}</root>")
    for el in root.iter():
        assert el.tag not in ("script", "img", "iframe", "object", "embed", "svg", "style", "link"), el.tag
        assert not any(a.lower().startswith("on") for a in el.attrib), el.attrib
    assert not any(ch in msg for ch in "\x00\x1b\x07") and "\ud800" not in msg
    return root


INJECTIONS = {
    "syntax_error_line": "def double(n) <script>alert(1)</script> ]]> &amp; </pre><img src=x onerror=alert(1)>\n",
    "exception_message": "raise ValueError('<script>alert(1)</script>]]>\\x00\\x1b[2J\\ud800</pre><img src=x onerror=alert(1)>')\n",
    "printed_markup_and_controls": "import sys\nprint('<script>alert(1)</script>]]>\\x00\\x07\\x1b[31m</pre><img src=x onerror=alert(1)>')\n"
                                   "sys.stdout.write('\\udcff')\ndef double(n):\n    raise RuntimeError('<b onmouseover=x>' + '&' * 5)\n",
    "markup_in_names": "def double(n):\n    class Evil(Exception):\n        pass\n"
                       "    Evil.__name__ = '<img src=x onerror=alert(1)>'\n    raise Evil(']]><script>')\n",
}


@pytest.mark.parametrize("injection", sorted(INJECTIONS))
@pytest.mark.parametrize("kind", KINDS)
def test_feedback_injection(attack_grader, kind, injection):
    report, reply = attack_grader.pipeline(kind, INJECTIONS[injection])
    assert report.score == 0
    root = _well_formed(reply.msg)
    text = "".join(root.itertext())
    if injection == "syntax_error_line":
        assert "<script>alert(1)</script>" in text  # shown as text, escaped in the markup
    assert not leaks(*report_texts(report, reply))


@pytest.mark.parametrize("grader", ["../../etc/passwd", "/etc/passwd", "vault/../../../../etc", "vault\0",
                                    "", "no_such_assignment", "vault/solution", "vault/tests", "..", "%2e%2e/etc"])
def test_payload_abuse(attack_grader, grader):
    report, reply = attack_grader.pipeline(grader, HONEST)
    assert report.outcome is Outcome.error and report.score == 0 and reply.correct is False, report
    _well_formed(reply.msg)
    assert "root:" not in reply.msg and not leaks(*report_texts(report, reply))
