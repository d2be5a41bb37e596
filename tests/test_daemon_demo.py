"""The demo harness's own parts: sample discovery, the LMS callback receiver
(real HTTP), the feedback summary and the results table."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from xgrader.daemon.demo_harness import CallbackReceiver, find_samples, msg_first_line, results_table


def test_find_samples_reads_text_as_typed_code_and_dirs_as_uploads(tmp_path: Path):
    samples = tmp_path / "sum" / "samples"
    (samples / "upload").mkdir(parents=True)
    (samples / "correct.py").write_text("def add(a, b):\n    return a + b\n")
    (samples / "upload" / "main.py").write_text("x = 1\n")
    (samples / "nb.ipynb").write_text("{}")
    (tmp_path / "no_samples").mkdir()
    found = {s.name: s for s in find_samples(tmp_path)}
    assert set(found) == {"correct.py", "upload", "nb.ipynb"}
    assert found["correct.py"].student_response.startswith("def add") and not found["correct.py"].files
    assert found["upload"].files == {"main.py": b"x = 1\n"}
    assert found["nb.ipynb"].files == {"nb.ipynb": b"{}"}
    assert all(s.assignment == "sum" for s in found.values())


def test_callback_receiver_records_each_delivery():
    rx = CallbackReceiver()
    try:
        body = {"correct": True, "score": 2, "msg": "<div>ok</div>"}
        for _ in range(2):
            requests.post(rx.url + "k1", data={"xqueue_header": "{}", "xqueue_body": json.dumps(body)}, timeout=5)
        assert rx.results == {"k1": [body, body]}
    finally:
        rx.stop()


def test_msg_first_line_and_table():
    msg = "<div><p>Score: 1 / 3 &amp; more</p><p>second</p></div>"
    assert msg_first_line(msg) == "Score: 1 / 3 & more"
    from xgrader.daemon.demo_harness import Sample
    samples = [Sample(key="a", assignment="sum", name="ok.py"), Sample(key="b", assignment="sum", name="lost.py")]
    table = results_table(samples, {"a": [{"correct": False, "score": 1, "msg": msg}]}, {"sum": 3})
    assert "1/3" in table and "incorrect" in table and "NO RESULT" in table


def test_find_samples_skips_caches_and_kinds_whose_extra_is_missing(tmp_path: Path, monkeypatch):
    import sys

    for name, kind in (("plain", "io"), ("pictures", "image")):
        (tmp_path / name / "samples" / "__pycache__").mkdir(parents=True)
        (tmp_path / name / "samples" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
        (tmp_path / name / "samples" / "correct.py").write_text("x = 1\n")
        (tmp_path / name / "assignment.toml").write_text(f'title = "t"\nkind = "{kind}"\n')
    monkeypatch.setitem(sys.modules, "PIL", None)   # Pillow not installed
    skipped: list[str] = []
    samples = find_samples(tmp_path, skipped)
    assert [(s.assignment, s.name) for s in samples] == [("plain", "correct.py")]
    assert skipped == ["pictures: image assignments need the 'images' extra: pip install 'xgrader[images]'"]
