"""One test per row of the reply table in shared/xqueue-protocol.md, against
the bundled queue server over real HTTP with plain requests (no client
code): exact return_code and content, HTTP 200, text/html."""

from __future__ import annotations

import json

import pytest
import requests

from tests.support.queue import GRADER, LMS, csrf_headers


def call(session: requests.Session, url: str, method: str, endpoint: str, **kw) -> tuple[int, object]:
    r = session.request(method, url + endpoint, timeout=10, **kw)
    assert r.status_code == 200, (endpoint, r.status_code, r.text[:200])
    assert r.headers["Content-Type"].startswith("text/html")
    reply = json.loads(r.text)
    assert set(reply) == {"return_code", "content"}
    return reply["return_code"], reply["content"]


@pytest.fixture
def grader(queue) -> requests.Session:
    s = requests.Session()
    assert call(s, queue.url, "POST", "login/", data={"username": GRADER[0], "password": GRADER[1]}) == (0, "Logged in")
    return s


def test_login_ok_sets_sessionid(queue):
    s = requests.Session()
    assert call(s, queue.url, "POST", "login/", data={"username": LMS[0], "password": LMS[1]}) == (0, "Logged in")
    assert s.cookies.get("sessionid")


def test_login_by_get_is_login_required(queue):
    assert call(requests.Session(), queue.url, "GET", "login/") == (1, "login_required")


def test_protected_call_without_session_redirects_to_login(queue):
    s = requests.Session()
    r = s.get(queue.url + "get_submission/", params={"queue_name": "q1"}, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"].startswith("/xqueue/login/?next=/xqueue/get_submission/")
    # after following the redirect: the login page's answer
    assert call(s, queue.url, "GET", "get_submission/", params={"queue_name": "q1"}) == (1, "login_required")
    r = s.post(queue.url + "put_result/", data={"xqueue_header": "{}", "xqueue_body": "{}"}, allow_redirects=False, timeout=10)
    assert r.status_code == 302


def test_session_expired_is_login_required(queue, grader):
    queue.app.expire_sessions()
    assert call(grader, queue.url, "GET", "get_queuelen/", params={"queue_name": "q1"}) == (1, "login_required")


def test_bad_credentials(queue):
    s = requests.Session()
    assert call(s, queue.url, "POST", "login/", data={"username": GRADER[0], "password": "nope"}) == (1, "Incorrect login credentials")
    assert call(s, queue.url, "POST", "login/", data={"username": "nobody", "password": "x"}) == (1, "Incorrect login credentials")
    assert not s.cookies.get("sessionid")


@pytest.mark.parametrize("data", [{}, {"username": "grader"}, {"password": "x"}])
def test_missing_login_fields(queue, data):
    assert call(requests.Session(), queue.url, "POST", "login/", data=data) == (1, "Insufficient login info")


def test_submit_by_get(queue):
    assert call(queue.lms, queue.url, "GET", "submit/") == (1, "Queue requests should use HTTP POST")


@pytest.mark.parametrize("header", [
    "not json",
    json.dumps({"lms_key": "k", "queue_name": "q1"}),
    json.dumps({"lms_callback_url": "http://x/", "queue_name": "q1"}),
    json.dumps({"lms_callback_url": "http://x/", "lms_key": "k"}),
    json.dumps(["lms_callback_url", "lms_key", "queue_name"]),
    None,  # a valid header but no xqueue_body field
])
def test_submit_invalid_format(queue, header):
    if header is None:
        data = {"xqueue_header": json.dumps({"lms_callback_url": "u", "lms_key": "k", "queue_name": "q1"})}
    else:
        data = {"xqueue_header": header, "xqueue_body": "{}"}
    assert call(queue.lms, queue.url, "POST", "submit/", data=data, headers=csrf_headers(queue.lms, queue.url)) \
        == (1, "Queue request has invalid format")


def test_submit_unknown_queue(queue):
    header = json.dumps({"lms_callback_url": "http://x/", "lms_key": "k", "queue_name": "nope"})
    assert call(queue.lms, queue.url, "POST", "submit/", data={"xqueue_header": header, "xqueue_body": "{}"}) \
        == (1, "Queue 'nope' not found")


def test_submit_ok_answers_queue_length_as_string(queue):
    for n in (1, 2):
        header = json.dumps({"lms_callback_url": f"http://x/{n}", "lms_key": f"k{n}", "queue_name": "q1"})
        assert call(queue.lms, queue.url, "POST", "submit/", data={"xqueue_header": header, "xqueue_body": "{}"}) \
            == (0, str(n))


def test_get_queuelen_ok_is_a_number(queue, grader):
    assert call(grader, queue.url, "GET", "get_queuelen/", params={"queue_name": "q1"}) == (0, 0)
    queue.submit(key="a", callback="http://x/a")
    code, content = call(grader, queue.url, "GET", "get_queuelen/", params={"queue_name": "q1"})
    assert (code, content) == (0, 1) and isinstance(content, int)


def test_get_queuelen_without_queue_name(queue, grader):
    assert call(grader, queue.url, "GET", "get_queuelen/") == (1, "'get_queuelen' must provide parameter 'queue_name'")


def test_get_queuelen_unknown_queue(queue, grader):
    assert call(grader, queue.url, "GET", "get_queuelen/", params={"queue_name": "zz"}) == (1, "Valid queue names are: q1, q2")


def test_get_submission_errors(queue, grader):
    assert call(grader, queue.url, "GET", "get_submission/") == (1, "'get_submission' must provide parameter 'queue_name'")
    assert call(grader, queue.url, "GET", "get_submission/", params={"queue_name": "zz"}) == (1, "Queue 'zz' not found")
    assert call(grader, queue.url, "GET", "get_submission/", params={"queue_name": "q2"}) == (1, "Queue 'q2' is empty")


def test_get_submission_ok_has_three_json_string_layers(queue, grader):
    sub = queue.submit(key="a", callback="http://x/a")
    code, content = call(grader, queue.url, "GET", "get_submission/", params={"queue_name": "q1"})
    assert code == 0 and isinstance(content, str)
    outer = json.loads(content)
    assert set(outer) == {"xqueue_header", "xqueue_body", "xqueue_files"}
    assert all(isinstance(v, str) for v in outer.values())
    header = json.loads(outer["xqueue_header"])
    assert header["submission_id"] == sub["id"] and len(header["submission_key"]) == 32
    int(header["submission_key"], 16)
    assert outer["xqueue_body"] == json.dumps(sub["body"])  # verbatim
    assert outer["xqueue_files"] == "{}"


def test_put_result_by_get(queue, grader):
    assert call(grader, queue.url, "GET", "put_result/") == (1, "'put_result' must use HTTP POST")


def _pulled(queue, grader) -> str:
    queue.submit(key="a", callback="http://x/a")
    _, content = call(grader, queue.url, "GET", "get_submission/", params={"queue_name": "q1"})
    return json.loads(content)["xqueue_header"]


@pytest.mark.parametrize("case", ["no_header", "no_body", "header_not_json", "no_id", "no_key", "json_body"])
def test_put_result_incorrect_reply_format(queue, grader, case):
    header = _pulled(queue, grader)
    h = json.loads(header)
    body = json.dumps({"correct": True, "score": 1, "msg": "<p/>"})
    kw = {
        "no_header": {"data": {"xqueue_body": body}},
        "no_body": {"data": {"xqueue_header": header}},
        "header_not_json": {"data": {"xqueue_header": "{nope", "xqueue_body": body}},
        "no_id": {"data": {"xqueue_header": json.dumps({"submission_key": h["submission_key"]}), "xqueue_body": body}},
        "no_key": {"data": {"xqueue_header": json.dumps({"submission_id": h["submission_id"]}), "xqueue_body": body}},
        "json_body": {"json": {"xqueue_header": header, "xqueue_body": body}},
    }[case]
    assert call(grader, queue.url, "POST", "put_result/", **kw) == (1, "Incorrect reply format")


@pytest.mark.parametrize("sid", [999, -1, 2**70, "12"])
def test_put_result_unknown_id(queue, grader, sid):
    header = json.dumps({"submission_id": sid, "submission_key": "0" * 32})
    assert call(grader, queue.url, "POST", "put_result/", data={"xqueue_header": header, "xqueue_body": "{}"}) \
        == (1, "Submission does not exist")


def test_put_result_key_mismatch(queue, grader):
    h = json.loads(_pulled(queue, grader))
    header = json.dumps({"submission_id": h["submission_id"], "submission_key": "f" * 32})
    assert call(grader, queue.url, "POST", "put_result/", data={"xqueue_header": header, "xqueue_body": "{}"}) \
        == (1, "Incorrect key for submission")


def test_put_result_ok(queue, grader):
    header = _pulled(queue, grader)
    body = json.dumps({"correct": True, "score": 1, "msg": "<p/>"})
    assert call(grader, queue.url, "POST", "put_result/", data={"xqueue_header": header, "xqueue_body": body}) == (0, "")


@pytest.mark.parametrize("endpoint", ["login", "status", "submit", "get_queuelen", "get_submission", "put_result"])
def test_missing_trailing_slash_is_301(queue, endpoint):
    r = requests.post(queue.url + endpoint, timeout=10, allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"].endswith(f"/xqueue/{endpoint}/")


def test_status_and_logout(queue, grader):
    assert call(requests.Session(), queue.url, "GET", "status/") == (0, "OK")
    assert call(grader, queue.url, "POST", "logout/")[0] == 0
    r = grader.get(queue.url + "get_queuelen/", params={"queue_name": "q1"}, allow_redirects=False, timeout=10)
    assert r.status_code == 302
