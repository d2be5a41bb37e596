"""The bundled queue server: persistence across restarts, leases, atomic
pulls, exactly-once delivery with retries, retiring, files, dashboard, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.support.procs import marker, pgrep
from tests.support.queue import GRADER, LMS, Receiver, wait_until
from xgrader.client import FilesPayloadError
from xgrader.wire import GraderReply, parse_submission

REPLY = GraderReply(correct=True, score=2, msg="<div>ok</div>")


def test_restart_loses_no_submission_lease_result_or_session(queue, receiver):
    subs = [queue.submit(key=f"k{i}", callback=receiver.url + f"k{i}") for i in range(3)]
    client = queue.client()
    first = parse_submission(client.get_submission("q1"))
    second = parse_submission(client.get_submission("q1"))
    assert client.put_result(second.header_raw, REPLY).accepted
    assert receiver.wait(1)[0]["xqueue_header"] == json.dumps(subs[1]["header"])

    queue.restart()

    assert client.get_queuelen("q1") == 1  # only k2 waits: k0 is still leased, k1 answered
    third = parse_submission(client.get_submission("q1"))
    assert third.submission_id == str(subs[2]["id"])
    assert client.get_submission("q1") is None  # the lease on k0 survived the restart
    # the lease key survived too, and the session: no re-login was needed
    assert client.put_result(first.header_raw, REPLY).accepted
    assert client.put_result(third.header_raw, REPLY).accepted
    assert len(receiver.wait(3)) == 3
    time.sleep(0.3)
    assert sorted(p["xqueue_header"] for p in receiver.posts) == sorted(json.dumps(s["header"]) for s in subs)
    assert queue.row(subs[1]["id"])["delivery"] == "delivered"


def test_pending_delivery_resumes_after_restart(make_queue):
    down = Receiver(status=503)
    queue = make_queue()
    sub = queue.submit(key="d", callback=down.url + "d")
    client = queue.client()
    pulled = parse_submission(client.get_submission("q1"))
    assert client.put_result(pulled.header_raw, REPLY).accepted
    assert wait_until(lambda: queue.row(sub["id"])["delivery_tries"] >= 1)
    queue.stop()
    down.status = 200
    queue.restart()
    assert len(down.wait(1)) == 1 and json.loads(down.posts[0]["xqueue_body"])["score"] == 2
    assert wait_until(lambda: queue.row(sub["id"])["delivery"] == "delivered")
    down.stop()


def test_unanswered_pull_comes_back_after_the_lease_with_a_new_key(make_queue):
    queue = make_queue(lease_timeout_s=0.6)
    sub = queue.submit()
    client = queue.client()
    first = parse_submission(client.get_submission("q1"))
    assert client.get_submission("q1") is None  # leased
    assert client.get_queuelen("q1") == 0
    time.sleep(0.7)
    assert client.get_queuelen("q1") == 1
    again = parse_submission(client.get_submission("q1"))
    assert again.submission_id == first.submission_id == str(sub["id"])
    assert again.header.submission_key != first.header.submission_key
    stale = client.put_result(first.header_raw, REPLY)
    assert stale.foreign_key and not stale.accepted and stale.message == "Incorrect key for submission"
    assert client.put_result(again.header_raw, REPLY).accepted
    assert queue.row(sub["id"])["pulls"] == 2


def test_pulling_is_atomic_under_concurrency(queue):
    n = 120
    for i in range(n):
        queue.submit(key=f"k{i}", callback=f"http://127.0.0.1:9/{i}")
    got: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        client = queue.client()
        while True:
            content = client.get_submission("q1")
            if content is None:
                return
            sub = parse_submission(content)
            with lock:
                got.append(sub.submission_id)
            assert client.put_result(sub.header_raw, REPLY).accepted

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == n and len(set(got)) == n  # every submission served exactly once


def test_second_put_is_accepted_but_never_delivered_twice(queue, receiver):
    sub = queue.submit(key="x", callback=receiver.url + "x")
    client = queue.client()
    pulled = parse_submission(client.get_submission("q1"))
    assert client.put_result(pulled.header_raw, REPLY).accepted
    other = GraderReply(correct=False, score=0, msg="<div>second</div>")
    assert client.put_result(pulled.header_raw, other).accepted  # legacy: return_code 0
    assert len(receiver.wait(1)) == 1
    time.sleep(0.5)
    assert len(receiver.posts) == 1 and json.loads(receiver.posts[0]["xqueue_body"])["msg"] == "<div>ok</div>"
    row = queue.row(sub["id"])
    assert (row["puts"], row["delivery"]) == (2, "delivered")


def test_callback_retried_until_delivered(queue):
    flaky = Receiver(fail_first=2)
    try:
        sub = queue.submit(key="r", callback=flaky.url + "r")
        client = queue.client()
        pulled = parse_submission(client.get_submission("q1"))
        assert client.put_result(pulled.header_raw, REPLY).accepted
        posts = flaky.wait(1)
        assert len(posts) == 1 and json.loads(posts[0]["xqueue_header"])["lms_key"] == "r"
        assert flaky.paths == ["/cb/r"]
        assert wait_until(lambda: queue.row(sub["id"])["delivery"] == "delivered")
        assert queue.row(sub["id"])["delivery_tries"] == 3
    finally:
        flaky.stop()


def test_callback_gives_up_after_bounded_tries(make_queue):
    dead = Receiver(status=500)
    queue = make_queue(delivery_tries=3)
    try:
        sub = queue.submit(key="f", callback=dead.url + "f")
        bad_scheme = queue.submit(key="g", callback="ftp://127.0.0.1/g")
        client = queue.client()
        for _ in range(2):
            pulled = parse_submission(client.get_submission("q1"))
            assert client.put_result(pulled.header_raw, REPLY).accepted
        assert wait_until(lambda: queue.row(sub["id"])["delivery"] == "failed")
        row = queue.row(sub["id"])
        assert row["delivery_tries"] == 3 and row["delivery_error"] == "HTTP 500"
        assert wait_until(lambda: queue.row(bad_scheme["id"])["delivery"] == "failed")
        assert queue.row(bad_scheme["id"])["delivery_tries"] == 1
    finally:
        dead.stop()


def test_new_submission_from_same_callback_retires_the_unanswered_one(queue, receiver):
    old = queue.submit(key="old", callback=receiver.url + "same")
    new = queue.submit(key="new", callback=receiver.url + "same")
    client = queue.client()
    pulled = parse_submission(client.get_submission("q1"))
    assert pulled.submission_id == str(new["id"])
    assert client.get_submission("q1") is None
    assert queue.row(old["id"])["state"] == "retired"


def test_uploaded_files_served_at_handed_out_urls_with_size_cap(make_queue):
    queue = make_queue()
    files = {"a.py": b"print('a')\n", "data.bin": bytes(range(256)) * 40}
    queue.submit(key="f", response="", files=files)
    client = queue.client()
    sub = parse_submission(client.get_submission("q1"))
    assert sub.body.student_response == "" and set(sub.files) == set(files)
    assert all(url.startswith(queue.url + "files/") for url in sub.files.values())
    assert client.fetch_files(sub.files) == files
    small = queue.client(max_file_bytes=1000)
    try:
        small.fetch_files(sub.files)
        raise AssertionError("the size cap did not hold")
    except FilesPayloadError as exc:
        assert "data.bin" in str(exc) and "1000 bytes" in str(exc) and exc.layer == "xqueue_files"
    assert requests.get(queue.url + "files/" + "0" * 32, timeout=5).status_code == 404


def test_large_file_maps_go_through_url_for_external_dicts(make_queue):
    queue = make_queue(external_dicts_over=2)
    files = {f"f{i}.txt": f"file {i}".encode() for i in range(3)}
    queue.submit(key="m", response="", files=files)
    client = queue.client()
    sub = parse_submission(client.get_submission("q1"))
    assert list(sub.files) == ["URL_FOR_EXTERNAL_DICTS"]
    assert client.fetch_files(sub.files) == files


def test_dashboard_lists_everything_escaped(queue):
    evil = "<script>alert(1)</script>"
    sub = queue.submit(key=evil, callback="http://127.0.0.1:9/" + evil)
    client = queue.client()
    pulled = parse_submission(client.get_submission("q1"))
    client.put_result(pulled.header_raw, GraderReply(correct=False, score=0, msg="<img src=x onerror=alert(2)>"))
    anon = requests.get(queue.url.replace("/xqueue/", "/"), timeout=5)
    assert anon.status_code == 200 and "password" in anon.text and evil not in anon.text
    page = queue.lms.get(queue.url.replace("/xqueue/", "/"), timeout=5).text
    assert evil not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert f"<td>{sub['id']}</td>" in page and "q2" in page  # every queue listed
    # the browser login form posts `next` and lands on the dashboard
    s = requests.Session()
    r = s.post(queue.url + "login/", data={"username": LMS[0], "password": LMS[1], "next": "/"}, timeout=5)
    assert r.status_code == 200 and "Latest submissions" in r.text


def test_cli_serve_submit_status_and_clean_sigterm(tmp_path):
    db = tmp_path / "cli.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "xgrader", "queue", "serve", "--host", "127.0.0.1", "--port", "0", "--db", str(db),
         "--queue", "cq", "--user", ":".join(GRADER), "--user", ":".join(LMS), "--lease-timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("xgrader queue listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        code = tmp_path / "sol.py"
        code.write_text("def f():\n    return 1\n")
        out = subprocess.run([sys.executable, "-m", "xgrader", "submit", "--server", url, "--user", ":".join(LMS),
                              "--queue", "cq", "--payload", '{"grader": "hello"}', "--student", "s9", str(code)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("submission_id=1 ") and "queue_length=1" in out.stdout
        bad = subprocess.run([sys.executable, "-m", "xgrader", "submit", "--server", url, "--user", "lms:wrong",
                              "--queue", "cq", "--payload", "x", str(code)], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "Incorrect login credentials" in bad.stderr
        from tests.support.queue import make_client
        client = make_client(url, queue_names=["cq"])
        sub = parse_submission(client.get_submission("cq"))
        assert sub.body.student_response == code.read_text() and sub.student.anonymous_student_id == "s9"
        assert client.put_result(sub.header_raw, REPLY).accepted
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "xgrader queue stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    status = subprocess.run([sys.executable, "-m", "xgrader", "queue", "status", "--db", str(db)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "answered" in status.stdout and "True  2" in status.stdout


def test_cli_serve_refuses_bad_config(tmp_path):
    out = subprocess.run([sys.executable, "-m", "xgrader", "queue", "serve", "--port", "0", "--db",
                          str(tmp_path / "x.db"), "--user", "nopassword"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "NAME:PASSWORD" in out.stderr
    cfg = tmp_path / "q.toml"
    cfg.write_text('queues = ["a", "b"]\nlease_timeout_s = 5\n[users]\ng = "pw"\n')
    from xgrader.queue_server import QueueServerConfig
    c = QueueServerConfig.load(cfg, port=1234, queues=None)
    assert (c.queues, c.lease_timeout_s, c.port, c.users["g"].get_secret_value()) == (["a", "b"], 5, 1234, "pw")


def raw_exchange(port: int, raw: bytes) -> tuple[list[bytes], bytes]:
    """Send raw bytes, read until the server closes: (status lines, all)."""
    import re
    import socket as socketlib

    with socketlib.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return re.findall(rb"HTTP/1\.[01] \d{3}[^\r\n]*", data), data


def test_http_keep_alive_chunked_bodies_and_a_stopped_server(queue):
    """One kept-alive connection: a chunked request body is read (the
    wrong password is seen), an unread body is skipped; a stopped server
    ends its kept-alive connections and answers nothing."""
    body = b"username=lms&password=wrong"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    lines, data = raw_exchange(queue.server.port, (
        b"POST /xqueue/login/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n" + chunked
        + b"POST /xqueue/status/ HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nGET /evil/ "
        + b"GET /xqueue/status/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert lines == [b"HTTP/1.1 200 OK"] * 3, data
    assert b"Incorrect login credentials" in data and data.count(b'"content": "OK"') == 2
    s = requests.Session()
    assert s.get(queue.url + "status/", timeout=5).status_code == 200
    queue.stop()
    try:
        s.get(queue.url + "status/", timeout=5)
        raise AssertionError("a stopped server answered")
    except requests.ConnectionError:
        pass


def test_http_request_basics(queue):
    """Keep-alive until Connection: close; HTTP/1.0 closes after one
    request; Expect: 100-continue; HEAD; a percent-encoded path; an
    oversized header is refused."""
    port = queue.server.port
    status = b"GET /xqueue/status/ HTTP/1.1\r\nHost: x\r\n\r\n"
    lines, data = raw_exchange(port, status + b"GET /xqueue/status/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert lines == [b"HTTP/1.1 200 OK"] * 2 and data.count(b'{"return_code": 0, "content": "OK"}') == 2
    assert data.endswith(b'"OK"}') and b"Connection: close\r\n" in data
    lines, data = raw_exchange(port, b"GET /xqueue/status/ HTTP/1.0\r\n\r\n" + status)  # 1.0: one request only
    assert len(lines) == 1 and lines[0].endswith(b"200 OK")
    body = b"username=lms&password=wrong"
    lines, data = raw_exchange(port, b"POST /xqueue/login/ HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                               b"Connection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert lines == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 200 OK"] and b"Incorrect login credentials" in data
    lines, data = raw_exchange(port, b"HEAD /xqueue/status/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert lines == [b"HTTP/1.1 200 OK"] and data.endswith(b"\r\n\r\n") and b"Content-Length: 35\r\n" in data
    lines, _ = raw_exchange(port, b"GET /xqueue/%73tatus/ HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert lines == [b"HTTP/1.1 200 OK"]
    try:  # the server may reset the connection before the client has read its 431
        lines, _ = raw_exchange(port, b"GET / HTTP/1.1\r\nX-A: " + b"a" * 300_000 + b"\r\n\r\n" + status)
        assert len(lines) == 1 and b" 431 " in lines[0] + b" "
    except ConnectionResetError:
        pass
    assert requests.get(queue.url + "status/", timeout=5).status_code == 200


def test_connections_are_capped_and_the_server_stays_up(make_queue):
    """max_connections kept-alive clients are served; one more waits in the
    listen backlog (no answer, no error) until one of them leaves, then is
    served; the server keeps serving throughout."""
    import re
    import socket as socketlib

    queue = make_queue(max_connections=3)
    request = b"GET /xqueue/status/ HTTP/1.1\r\nHost: x\r\n\r\n"

    def ask(s: socketlib.socket, timeout: float, send: bool = True) -> bytes:
        """One whole response (head and Content-Length body, which may
        arrive in separate segments)."""
        s.settimeout(timeout)
        if send:
            s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < length(data):
            chunk = s.recv(65536)
            assert chunk, f"the server closed the connection after {data!r}"
            data += chunk
        return data

    def length(data: bytes) -> int:
        found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", data.partition(b"\r\n\r\n")[0])
        return int(found.group(1)) if found else 0

    queue.lms.close()  # the harness' own kept-alive LMS session: the three slots are the test's
    held = [socketlib.create_connection(("127.0.0.1", queue.server.port)) for _ in range(3)]
    extra = None
    try:
        for s in held:
            assert ask(s, 5).startswith(b"HTTP/1.1 200")
        extra = socketlib.create_connection(("127.0.0.1", queue.server.port))
        try:
            reply = ask(extra, 1.0)
            raise AssertionError(f"a fourth connection was served: {reply[:100]!r}")
        except socketlib.timeout:
            pass
        for s in held:  # the three are still served
            assert ask(s, 5).startswith(b"HTTP/1.1 200")
        held.pop().close()
        assert ask(extra, 5, send=False).startswith(b"HTTP/1.1 200")  # its waiting request, now answered
        assert ask(extra, 5).startswith(b"HTTP/1.1 200")
    finally:
        for s in held + ([extra] if extra else []):
            s.close()
    assert queue.client().get_queuelen("q1") == 0


def test_cli_submit_uploads_several_files(queue, tmp_path):
    a, b = tmp_path / "main.py", tmp_path / "data.csv"
    a.write_text("import data\n")
    b.write_bytes(b"x,y\n1,2\n")
    out = subprocess.run([sys.executable, "-m", "xgrader", "submit", "--server", queue.url, "--user", ":".join(LMS),
                          "--queue", "q2", "--payload", "word_freq", str(a), str(b)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    client = queue.client()
    sub = parse_submission(client.get_submission("q2"))
    assert sub.payload.grader == "word_freq" and sub.body.student_response == ""
    assert client.fetch_files(sub.files) == {"main.py": b"import data\n", "data.csv": b"x,y\n1,2\n"}


@pytest.mark.slow
def test_sigkilled_daemon_mid_grade_graded_once_by_another_after_the_lease(tmp_path):
    """The real stack: `xgrader queue serve` with a short lease, `xgrader run`
    (bwrap) SIGKILLed while it grades; a second daemon gets the submission
    after the lease and it reaches the LMS exactly once."""
    import sqlite3

    from xgrader.config import DEFAULT_HANDLERS
    from xgrader.daemon.demo_harness import CallbackReceiver, DemoRun, free_port, login, submit, wait_http, Sample

    slow = DEFAULT_HANDLERS / "sum_digits" / "samples" / "wrong_infinite_loop.py"
    if not slow.is_file():
        pytest.skip("needs payload_handlers/sum_digits (example assignments)")
    run = DemoRun(handlers=DEFAULT_HANDLERS, workdir=tmp_path, out=sys.stderr)
    port, password = free_port(), "pw-" + os.urandom(4).hex()
    url = f"http://127.0.0.1:{port}/xqueue/"
    db = tmp_path / "queue.db"
    queue = subprocess.Popen([sys.executable, "-m", "xgrader", "queue", "serve", "--port", str(port), "--db", str(db),
                              "--queue", "demo", "--user", f"xgrader:{password}", "--lease-timeout", "4"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    receiver = CallbackReceiver()
    daemons: list[subprocess.Popen] = []
    try:
        wait_http(url + "status/", 30, queue)
        session = requests.Session()
        login(session, url, "xgrader", password)
        # The submission announces that it runs: a `sleep` the test can see on the host.
        mark = marker(threading.get_ident())
        code = f"import subprocess\nsubprocess.Popen({mark.split()!r})\n" + slow.read_text()
        sample = Sample(key="slow-" + os.urandom(3).hex(), assignment="sum_digits", name="slow",
                        student_response=code)
        submit(session, url, sample, receiver.url)

        def pulls() -> int:
            with sqlite3.connect(db) as c:
                return c.execute("SELECT pulls FROM submissions").fetchone()[0]

        daemons.append(run.start_daemon(url, password))
        assert wait_until(lambda: pulls() >= 1, 60)
        assert wait_until(lambda: bool(pgrep(mark)), 60)  # grading is under way (the batch takes seconds)
        daemons[0].send_signal(signal.SIGKILL)
        daemons[0].wait(10)
        assert not receiver.results  # killed before it could post
        daemons.append(run.start_daemon(url, password))
        assert wait_until(lambda: receiver.count() == 1, 90)
        time.sleep(1.0)  # a second delivery would arrive now
        assert len(receiver.results[sample.key]) == 1 and pulls() == 2
        body = receiver.results[sample.key][0]
        assert body["correct"] is False and "time" in body["msg"].lower()
    finally:
        for p in daemons + [queue]:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        receiver.stop()


@pytest.mark.slow
def test_queue_server_restart_mid_run_loses_nothing(tmp_path):
    """`xgrader queue serve` SIGTERMed and started again on the same database
    and port while a real daemon grades: every sample still reaches the LMS
    exactly once."""
    from xgrader.config import DEFAULT_HANDLERS
    from xgrader.daemon.demo_harness import CallbackReceiver, DemoRun, find_samples, free_port, login, submit, wait_http

    samples = find_samples(DEFAULT_HANDLERS) if DEFAULT_HANDLERS.is_dir() else []
    if len(samples) < 4:
        pytest.skip("needs the example assignments' samples/")
    run = DemoRun(handlers=DEFAULT_HANDLERS, workdir=tmp_path, out=sys.stderr)
    port, password = free_port(), "pw-" + os.urandom(4).hex()
    url = f"http://127.0.0.1:{port}/xqueue/"
    cmd = [sys.executable, "-m", "xgrader", "queue", "serve", "--port", str(port), "--db", str(tmp_path / "q.db"),
           "--queue", "demo", "--user", f"xgrader:{password}", "--lease-timeout", "5", "--delivery-backoff", "0.2"]
    queue = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    receiver = CallbackReceiver()
    daemon = None
    try:
        wait_http(url + "status/", 30, queue)
        session = requests.Session()
        login(session, url, "xgrader", password)
        for s in samples:
            submit(session, url, s, receiver.url)
        daemon = run.start_daemon(url, password)
        assert wait_until(lambda: receiver.count() >= 2, 60)
        queue.send_signal(signal.SIGTERM)
        assert queue.wait(15) == 0
        time.sleep(1.0)  # the daemon meets a dead queue: it backs off and keeps its children's results
        queue = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(url + "status/", 30, queue)
        keys = [s.key for s in samples]
        assert wait_until(lambda: receiver.count() == len(keys), 120), (receiver.count(), len(keys))
        time.sleep(1.0)
        with receiver.lock:
            counts = {k: len(receiver.results.get(k, [])) for k in keys}
        assert set(counts.values()) == {1}, counts
        assert daemon.poll() is None
    finally:
        for p in (daemon, queue):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        receiver.stop()


def test_upload_larger_than_the_cap_is_refused_and_nothing_stored(make_queue):
    queue = make_queue(max_upload_bytes=10_000)
    header = json.dumps({"lms_callback_url": "http://127.0.0.1:9/x", "lms_key": "big", "queue_name": "q1"})
    r = queue.lms.post(queue.url + "submit/", data={"xqueue_header": header, "xqueue_body": "{}"},
                       files={"big.bin": ("big.bin", b"x" * 50_000)}, timeout=10)
    assert r.status_code == 413 and json.loads(r.text)["return_code"] == 1
    assert queue.client().get_queuelen("q1") == 0
    # the connection (or a new one) still serves the next request
    assert queue.lms.get(queue.url + "status/", timeout=5).status_code == 200


def test_queue_length_is_kept_by_counts_through_retire_lease_answer_and_restart(tmp_path):
    from xgrader.queue_server.store import Store

    db = tmp_path / "q.db"
    store = Store(db)

    def brute(queue: str) -> int:
        with store.conn() as c:
            return c.execute("SELECT count(*) FROM submissions WHERE state='pending' AND queue=? AND leased_until<=?",
                             (queue, time.time())).fetchone()[0]

    assert store.submit("a", "cb/1", "k", "{}", "{}")[1] == 1
    assert store.submit("a", "cb/2", "k", "{}", "{}")[1] == 2
    assert store.submit("b", "cb/3", "k", "{}", "{}")[1] == 1
    assert store.submit("a", "cb/1", "k", "{}", "{}")[1] == 2  # retires the first cb/1
    assert store.submit("b", "cb/2", "k", "{}", "{}")[1] == 2  # retires cb/2 in the *other* queue
    assert (store.queue_length("a"), store.queue_length("b")) == (1, 2)
    leased = store.pull("a", 60)
    expired = store.pull("b", -1)  # its lease is already over: still waiting
    assert leased and expired and store.queue_length("a") == 0 and store.queue_length("b") == 2
    store.put_result(expired.id, expired.key, "{}")
    assert store.queue_length("b") == 1
    with store.conn() as c:  # any writer keeps the counts: the triggers live in the database
        c.execute("UPDATE submissions SET state='retired' WHERE id=?", (leased.id,))
    assert store.queue_length("a") == 0 and all(store.queue_length(q) == brute(q) for q in "ab")
    with store.conn() as c:
        c.execute("UPDATE pending_counts SET n = 99")  # derived data: rebuilt at every start
    store.close()
    store = Store(db)
    assert (store.queue_length("a"), store.queue_length("b"), store.queue_length("none")) == (0, 1, 0)
    with store.conn() as c:
        plan = " ".join(r[3] for r in c.execute(
            "EXPLAIN QUERY PLAN SELECT count(*) FROM submissions INDEXED BY sub_leased"
            " WHERE state='pending' AND leased_until>0 AND leased_until>? AND queue=?", (0, "a")))
    assert "sub_leased" in plan  # the cost follows the leases in flight, not the backlog
    store.close()


class ScriptedLms:
    """A raw-socket LMS answering each callback with the next scripted
    reply, verbatim, and recording (connection number, head, body) per
    request. A reply marked `close` ends its connection afterwards
    (`wait_closed(n)` waits for connection n to be closed)."""

    def __init__(self, replies: list[tuple[bytes, bool]]) -> None:
        import socket as socketlib

        self.replies = list(replies)
        self.seen: list[tuple[int, bytes, bytes]] = []
        self.lock = threading.Lock()
        self.closed: set[int] = set()
        self.listener = socketlib.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/cb/x?y=1"
        self.conns = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._serve, args=(conn, self.conns), daemon=True).start()

    def _serve(self, conn, n: int) -> None:
        f = conn.makefile("rb")
        with conn, f:  # both: the socket closes only when its file does too
            while True:
                head = b""
                while (line := f.readline()) not in (b"\r\n", b""):
                    head += line
                if not head:
                    return
                length = int(next(v for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                                  if k.lower() == b"content-length"))
                body = f.read(length)
                with self.lock:
                    self.seen.append((n, head, body))
                    reply, close = self.replies.pop(0)
                conn.sendall(reply)
                if close:
                    break
        with self.lock:
            self.closed.add(n)

    def wait_closed(self, n: int) -> bool:
        return wait_until(lambda: n in self.closed, 5)

    def stop(self) -> None:
        self.listener.close()


def test_delivery_reads_replies_on_kept_alive_connections(tmp_path):
    """The deliverer's pooled connections: a Content-Length reply keeps the
    connection (also after 100 Continue, and for an error status); a
    chunked reply or one that ends at the close is judged by its status and
    its connection closed; an LMS that closed a kept-alive connection is
    noticed before the next post is sent."""
    from urllib.parse import parse_qs

    from xgrader.queue_server.delivery import Deliverer
    from xgrader.queue_server.store import Delivery, Store

    lms = ScriptedLms([
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK", False),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", False),
        (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!", False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nOK\r\n0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),  # then closed without a word
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),
    ])
    d = Deliverer(Store(tmp_path / "q.db")).start()
    item = Delivery(1, lms.url, '{"lms":"h"}', '{"score": 1}', 0)
    try:
        outcomes = [d._post(item) for _ in range(6)]
        outcomes.append(d._post(item))
        assert lms.wait_closed(3)  # the LMS has closed the kept-alive connection
        outcomes.append(d._post(item))
    finally:
        lms.stop()
    assert outcomes == [(True, ""), (True, ""), (False, "HTTP 500"), (True, ""), (True, ""), (True, ""),
                        (True, ""), (True, "")]
    # one connection up to the chunked reply (closed unread), one for the
    # read-to-close reply, one the LMS dropped, and a new one after it
    assert [n for n, _, _ in lms.seen] == [1, 1, 1, 1, 1, 2, 3, 4]
    n, head, body = lms.seen[0]
    assert head.startswith(b"POST /cb/x?y=1 HTTP/1.1\r\n") and b"\r\nHost: 127.0.0.1:" in head
    assert b"Content-Type: application/x-www-form-urlencoded" in head
    assert {k: v[0] for k, v in parse_qs(body.decode()).items()} == {
        "xqueue_header": '{"lms":"h"}', "xqueue_body": '{"score": 1}'}
    bad = Delivery(2, "http://127.0.0.1:99999/cb", "{}", "{}", 0)
    assert d._post(bad)[0] is False and d._post(Delivery(3, "ftp://x/", "{}", "{}", 0)) == (
        False, "unsupported callback URL scheme")
    for url in ("http://127.0.0.1:1/a b", "http://127.0.0.1:1/a\r\nX-Injected: 1", "http://127.0.0.1:1/\u00e9"):
        ok, error = d._post(Delivery(4, url, "{}", "{}", 0))  # refused before any byte is sent
        assert not ok and error.startswith("unsupported callback URL"), (url, error)
    d.stop()


SMUGGLED = b"HTTP/1.1 418 Smuggled\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("reply, outcome", [
    # A lenient client (int() on the length, int(x, 16) on chunk sizes) reads
    # these as complete and takes SMUGGLED for the next post's reply.
    (b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", (False, "malformed reply from the LMS: Content-Length +5")),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n0123456789",
     (False, "malformed reply from the LMS: Content-Length 1_0")),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5 \r\nContent-Length:\t5\r\n\r\nhello",
     (False, "malformed reply from the LMS: Content-Length 5, 5")),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     (False, "malformed reply from the LMS: Content-Length with Transfer-Encoding")),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+0\r\n\r\n", (True, "")),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x0\r\n\r\n", (True, "")),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 0_0 \r\n\r\n", (True, "")),
], ids=["plus", "underscore", "repeated", "with-te", "chunk-plus", "chunk-0x", "chunk-underscore"])
def test_delivery_never_reads_a_reply_behind_lenient_framing(tmp_path, reply, outcome):
    """A misbehaving LMS peer hides a second reply behind a length or chunk
    size that only a lenient parser accepts. The deliverer reads no body it
    cannot frame strictly and never reuses such a connection: the next post
    goes out on a new connection and gets the LMS's real reply."""
    from xgrader.queue_server.delivery import Deliverer
    from xgrader.queue_server.store import Delivery, Store

    lms = ScriptedLms([(reply + SMUGGLED, False), (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False)])
    d = Deliverer(Store(tmp_path / "q.db")).start()
    item = Delivery(1, lms.url, "{}", "{}", 0)
    try:
        first, second = d._post(item), d._post(item)
    finally:
        lms.stop()
        d.stop()
    assert second == (True, "") and [n for n, _, _ in lms.seen] == [1, 2]  # not SMUGGLED's 418
    assert first == outcome
