"""sandbox/runner.py on the real bwrap backend: ops, value encoding, capture,
errors, exec mode."""

from __future__ import annotations

import base64
import json
import time

import pytest

from xgrader.handlers.student import RunnerDied, StudentRunner
from xgrader.handlers.values import Handle, decode, strict_equal
from xgrader.backends.base import Limits, SandboxJob, Verdict

SOURCE = '''
import sys
CHANNEL_SEEN = __import__("os").environ.get("XGRADER_CHANNEL")
def echo(*args, **kwargs):
    return args, kwargs
def shout(n):
    print("x" * n)
    print("err", file=sys.stderr)
    return n
class Weird(int):
    def __eq__(self, other): return True
    def __int__(self): return 999
    def __repr__(self): return "999"
class WeirdStr(str):
    def __str__(self): return "forged"
    def __eq__(self, other): return True
def weird(): return Weird(5), WeirdStr("real"), [Weird(1)]
class Box:
    def __init__(self, v): self.v = v
    def get(self): return self.v
    def __len__(self): return 3
    def __str__(self): return "Box!"
    def __eq__(self, other): return True
def helper():
    raise KeyError("deep")
def fails():
    helper()
def huge():
    return "y" * (5 * 1024 * 1024)
def deep():
    x = []
    for _ in range(200):
        x = [x]
    return x
def big_int():
    return 10 ** 5000
'''


@pytest.fixture
def runner(bwrap_backend):
    r = StudentRunner(bwrap_backend, {"submission.py": SOURCE.encode()}, Limits(wall_s=20),
                      module="submission", entry="submission.py", label="test-runner")
    reply = r.start(10)
    assert reply["ok"], reply
    yield r
    r.close()


def call(runner, target, *args, **kwargs):
    return runner.request({"op": "call", "target": target, "args": list(args), "kwargs": kwargs}, 10)


def test_load_reports_names_with_kinds(runner):
    names = runner.load_reply["names"]
    assert names["echo"] == "function" and names["Box"] == "class" and names["CHANNEL_SEEN"] == "value"


def test_channel_taken_before_student_code(runner):
    reply = runner.request({"op": "getattr", "target": None, "name": "CHANNEL_SEEN"}, 5)
    assert reply == {**reply, "ok": True, "value": None}


@pytest.mark.parametrize("value", [
    None, True, False, 0, 1, -7, 2 ** 70, -(2 ** 64), 1.5, float("inf"), "text", "ünï\u2603",
    b"\x00\xff", (1, 2), [1, (2, 3)], {"a": 1}, {1: "x", (1, 2): [3]}, {"$tuple": 1}, {1, 2},
    frozenset({3}), 1 + 2j, [], (), {}, set(),
])
def test_values_round_trip_type_preserving(runner, value):
    from xgrader.handlers.values import decode as host_decode
    from tests.test_runner import encode_arg
    reply = call(runner, "echo", encode_arg(value))
    assert reply["ok"], reply
    args, kwargs = host_decode(reply["value"])
    assert strict_equal(args[0], value)


def encode_arg(v):
    """A tiny host-side encoder for the test (the proxy has the real one)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return v if abs(v) < 2 ** 53 else {"$int": str(v)}
    if isinstance(v, float):
        return v if v == v and abs(v) != float("inf") else {"$float": "inf"}
    if isinstance(v, bytes):
        return {"$bytes": base64.b64encode(v).decode()}
    if isinstance(v, complex):
        return {"$complex": [v.real, v.imag]}
    if isinstance(v, list):
        return [encode_arg(x) for x in v]
    if isinstance(v, tuple):
        return {"$tuple": [encode_arg(x) for x in v]}
    if isinstance(v, dict):
        return {"$dict": [[encode_arg(k), encode_arg(x)] for k, x in v.items()]}
    return {"$" + type(v).__name__: [encode_arg(x) for x in v]}


def test_nan_round_trip(runner):
    reply = call(runner, "echo", {"$float": "nan"})
    value = decode(reply["value"])[0][0]
    assert value != value


def test_builtin_subclasses_arrive_as_plain_values(runner):
    value = decode(call(runner, "weird")["value"])
    assert value == (5, "real", [1])
    assert type(value[0]) is int and type(value[1]) is str and type(value[2][0]) is int


def test_other_objects_are_handles(runner):
    reply = call(runner, "Box", 41)
    box = decode(reply["value"])
    assert isinstance(box, Handle) and box.type_name == "Box"
    assert box != 41 and box != box.__class__  # identity only, never the student's __eq__
    handle = {"$handle": reply["value"]["$handle"]}
    assert runner.request({"op": "call", "target": handle, "method": "get"}, 5)["value"] == 41
    assert runner.request({"op": "getattr", "target": handle, "name": "v"}, 5)["value"] == 41
    assert runner.request({"op": "special", "target": handle, "name": "len"}, 5)["value"] == 3
    assert runner.request({"op": "special", "target": handle, "name": "str"}, 5)["value"] == "Box!"


def test_output_captured_per_request_and_capped(runner):
    reply = call(runner, "shout", 10)
    assert reply["stdout"] == "x" * 10 + "\n" and reply["stderr"] == "err\n"
    reply = call(runner, "shout", 200_000)
    assert reply["ok"] and reply["stdout"].endswith("[output truncated]") and len(reply["stdout"]) < 70_000
    assert call(runner, "echo")["stdout"] == ""


def test_exception_with_trimmed_traceback(runner):
    reply = call(runner, "fails")
    err = reply["error"]
    assert not reply["ok"] and err["type"] == "KeyError" and err["builtin"] is True
    assert "submission.py" in err["traceback"] and "helper" in err["traceback"]
    assert "runner.py" not in err["traceback"] and "/opt/xgrader" not in err["traceback"]


def test_oversized_and_deep_values_are_errors_not_crashes(runner):
    for target in ("huge", "deep", "big_int"):
        reply = call(runner, target)
        assert not reply["ok"], target
    assert call(runner, "echo", 1)["ok"]


def test_batch_streams_one_reply_per_expression(runner):
    rid = runner.send({"op": "batch", "exprs": ["echo(1)", "1/0", "shout(2)"]})
    replies = [runner.receive(rid, 5, index=i) for i in range(3)]
    assert replies[0]["repr"] == "((1,), {})"
    assert replies[1]["error"]["type"] == "ZeroDivisionError"
    assert replies[2]["value"] == 2 and replies[2]["stdout"] == "xx\n"
    assert runner.receive(rid, 5, index=3)["done"] is True


def test_files_op_writes_under_workdir_only(runner):
    data = base64.b64encode(b"hello").decode()
    assert runner.request({"op": "files", "files": {"sub/a.txt": data}}, 5)["ok"]
    assert runner.request({"op": "eval", "expr": "open('sub/a.txt').read()"}, 5)["value"] == "hello"
    assert not runner.request({"op": "files", "files": {"../x": data}}, 5)["ok"]


def test_syntax_error_details(bwrap_backend):
    r = StudentRunner(bwrap_backend, {"submission.py": b"x = 1\ndef f(:\n    pass\n"}, Limits(),
                      module="submission", entry="submission.py", label="test-runner")
    try:
        reply = r.start(10)
    finally:
        r.close()
    err = reply["error"]
    assert err["type"] == "SyntaxError" and err["lineno"] == 2 and err["text"].startswith("def f(:")
    assert isinstance(err["offset"], int)


def test_exec_mode_runs_a_program_with_stdin(bwrap_backend):
    job = SandboxJob(argv=bwrap_backend.python_argv("exec", "main.py"),
                     files={"main.py": b"import helper\nprint(helper.twice(int(input())))\n",
                            "helper.py": b"def twice(x):\n    return 2 * x\n"},
                     stdin=b"21\n", label="test-runner")
    result = bwrap_backend.run(job)
    assert result.exit_code == 0 and result.stdout == "42\n"
    crash = bwrap_backend.run(job.model_copy(update={"files": {"main.py": b"def f():\n    1/0\nf()\n"}}))
    marker = [line for line in crash.stderr.splitlines() if line.startswith("##xgrader-error## ")]
    assert crash.exit_code == 1 and json.loads(marker[-1][18:])["type"] == "ZeroDivisionError"


def test_runner_starts_fast(bwrap_backend):
    times = []
    for _ in range(3):
        r = StudentRunner(bwrap_backend, {"submission.py": b"x = 1\n"}, Limits(), module="submission",
                          entry="submission.py", label="test-runner")
        began = time.monotonic()
        assert r.start(10)["ok"]
        times.append(time.monotonic() - began)
        r.close()
    assert min(times) < 0.5, times


# -- the student's standard streams -------------------------------------------------

STREAMS = '''
import os, subprocess, sys
print("at import")
AT_IMPORT = sys.stdout
write = sys.stdout.write
def fd_level():
    os.write(1, b"one ")
    os.write(sys.stdout.fileno(), b"two ")
    sys.__stdout__.write("three ")
    print("four", flush=True)
    subprocess.run([sys.executable, "-I", "-S", "-c", "print('child')"], check=True)
    os.write(2, b"fd2")
def by_alias(text):
    write(text)
def say(text):
    print(text)
def stream():
    return id(sys.stdout), sys.stdout.line_buffering, sys.stdout.encoding
def reconfigure():
    sys.stdout.reconfigure(line_buffering=True)
def close(text):
    print(text)
    sys.stdout.close()
    sys.stderr.close()
def close_fds():
    print("gone", flush=True)
    os.close(1)
    os.close(2)
def flood(n):
    chunk = b"z" * 65536
    for _ in range(n):
        os.write(1, chunk)
def stdin():
    return sys.stdin.read(), sys.stdin.isatty(), sys.stdin.encoding
def ask():
    return input("name? ")
'''


@pytest.fixture
def streams(bwrap_backend):
    r = StudentRunner(bwrap_backend, {"submission.py": STREAMS.encode()}, Limits(wall_s=20, output_bytes=500_000),
                      module="submission", entry="submission.py", label="test-runner")
    reply = r.start(10)
    assert reply["ok"] and reply["stdout"] == "at import\n", reply
    yield r
    r.close()


def test_output_is_captured_at_the_descriptor(streams):
    """os.write on fd 1, sys.__stdout__, a child process: all part of the call's output, in order."""
    reply = call(streams, "fd_level")
    assert reply["ok"], reply
    assert reply["stdout"] == "one two three four\nchild\n" and reply["stderr"] == "fd2"
    assert call(streams, "stream")["stdout"] == ""  # nothing carries over to the next call


def test_streams_live_as_long_as_the_program(streams):
    """A stream bound at import keeps working; a reconfigure() stays, as in a program."""
    assert call(streams, "by_alias", "late\n")["stdout"] == "late\n"
    first = call(streams, "stream")["value"]
    call(streams, "reconfigure")
    second = call(streams, "stream")["value"]
    assert first["$tuple"][0] == second["$tuple"][0] and second["$tuple"][1:] == [True, "utf-8"]


def test_closing_stdout_ends_the_output_of_that_call(streams):
    reply = call(streams, "close", "answer")
    assert reply["ok"] and reply["stdout"] == "answer\n", reply
    assert call(streams, "close", "again")["stdout"] == "again\n"  # fresh streams next time
    reply = call(streams, "close_fds")
    assert reply["ok"] and reply["stdout"] == "gone\n", reply
    assert call(streams, "say", "still here")["stdout"] == "still here\n"
    assert call(streams, "by_alias", "x")["error"]["type"] == "ValueError"  # bound to the closed one, as in a program


def test_output_limit_counts_bytes_written_to_the_descriptor(bwrap_backend, streams):
    assert call(streams, "flood", 2)["ok"]  # 128 KiB: under the 500 KB limit
    with pytest.raises(RunnerDied) as died:
        call(streams, "flood", 10)
    assert died.value.verdict is Verdict.output


def test_stdin_is_an_empty_text_stream(streams):
    assert call(streams, "stdin")["value"] == {"$tuple": ["", False, "utf-8"]}
    reply = call(streams, "ask")
    assert reply["error"]["type"] == "EOFError" and reply["stdout"] == "name? "
