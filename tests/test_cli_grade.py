"""`xgrader grade` as a real subprocess on the bwrap backend: stdout is exactly
the reply body the daemon would post, and its msg is one well-formed XML element."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from xgrader.config import DEFAULT_HANDLERS

SAMPLES = DEFAULT_HANDLERS


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    return env


def grade(env, payload: str, *files: Path | str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "xgrader", "grade", "--handlers", str(DEFAULT_HANDLERS), "--sandbox", "bwrap",
           "--payload", payload, *extra, *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def body(proc: subprocess.CompletedProcess) -> dict:
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # exactly one line: the body, nothing else on stdout
    reply = json.loads(lines[0])
    assert set(reply) == {"correct", "score", "msg"}
    ET.fromstring(reply["msg"])  # one well-formed XML element
    return reply


def test_grade_prints_the_reply_body(env):
    proc = grade(env, '{"grader": "sum_digits"}', SAMPLES / "sum_digits/samples/wrong_offbyone.py")
    assert proc.returncode == 0, proc.stderr
    reply = body(proc)
    assert reply["correct"] is False and 0 < reply["score"] < 11
    assert "sum_digits(123)" in reply["msg"]  # a visible case shows its input


def test_grade_full_marks_and_bare_payload(env):
    proc = grade(env, "is_prime", SAMPLES / "is_prime/samples/correct.py")
    assert proc.returncode == 0, proc.stderr
    reply = body(proc)
    assert reply == {**reply, "correct": True, "score": 10}


def test_grade_syntax_error_is_graded(env):
    proc = grade(env, '{"grader": "is_prime"}', SAMPLES / "is_prime/samples/wrong_syntax.py")
    assert proc.returncode == 0
    reply = body(proc)
    assert reply["score"] == 0 and reply["correct"] is False
    text = "".join(ET.fromstring(reply["msg"]).itertext())
    assert "Syntax error on line 1" in text and "def is_prime(n)" in text


def test_grade_several_files_a_folder_and_a_zip(env):
    folder = SAMPLES / "word_freq/samples/correct"
    by_files = body(grade(env, "word_freq", folder / "wordfreq.py", folder / "cleaning.py"))
    by_folder = body(grade(env, "word_freq", folder))
    by_zip = body(grade(env, "word_freq", SAMPLES / "word_freq/samples/correct_zipped.zip"))
    assert by_files["score"] == by_folder["score"] == by_zip["score"] == 10
    notebook = body(grade(env, "temperature_notebook", SAMPLES / "temperature_notebook/samples/correct.ipynb"))
    assert notebook["correct"] is True


def test_grade_text_view(env):
    proc = grade(env, "sum_digits", SAMPLES / "sum_digits/samples/wrong_negative_crash.py", extra=("--text",))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("9/11 points")
    assert "ValueError" in proc.stdout and "<" not in proc.stdout.splitlines()[0]


def test_grade_errors_exit_non_zero_with_a_clear_message(env, tmp_path):
    unknown = grade(env, '{"grader": "no_such_assignment"}', SAMPLES / "is_prime/samples/correct.py")
    assert unknown.returncode == 2
    assert "no_such_assignment" in unknown.stderr
    body(unknown)  # still the exact reply a student would have been sent

    bad_payload = grade(env, '{"grader": ', SAMPLES / "is_prime/samples/correct.py")
    assert bad_payload.returncode == 2 and "bad --payload" in bad_payload.stderr and not bad_payload.stdout

    missing = grade(env, "is_prime", tmp_path / "nope.py")
    assert missing.returncode == 2 and "nope.py" in missing.stderr

    unsafe = grade(env, "is_prime", SAMPLES / "is_prime/samples/correct.py", extra=("--sandbox", "unsafe"))
    assert unsafe.returncode == 3 and "--unsafe-no-sandbox" in unsafe.stderr


def test_rejected_upload_is_zero_of_the_assignments_points(env):
    proc = grade(env, '{"grader": "word_freq"}', SAMPLES / "word_freq" / "samples" / "wrong_zip_escape.zip",
                 extra=("--text",))
    assert proc.returncode == 0, proc.stderr
    assert "0/10 points" in proc.stdout
    assert "could not be read" in proc.stdout
