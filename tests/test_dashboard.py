"""The submissions dashboard in headless Chromium (Debian's package) against
a real stack: `xgrader queue serve --ledger` and `xgrader run` (bwrap)
subprocesses, real submissions. Logs in through the login form, filters the
list, opens a wrong submission, checks its feedback, staff view, delivery
and ledger history in the DOM, takes screenshots of both pages, and
regrades through the CSRF-protected form. Plus the refusals (no session, no
or a foreign CSRF token, a double submit) and pagination over HTTP."""

from __future__ import annotations

import html
import json
import os
import re
import time
from pathlib import Path

import pytest
import requests

from tests.support.ledger_stack import RIGHT, WRONG, Stack, sample
from xgrader.ledger import Ledger

pytestmark = pytest.mark.slow

SHOTS = Path(os.environ.get("XGRADER_SCREENSHOTS", "")) if os.environ.get("XGRADER_SCREENSHOTS") else None
PRINTS = "def is_prime(n):\n    print(n > 1 and all(n % d for d in range(2, n)))\n"


@pytest.fixture
def graded_stack(tmp_path):
    stack = Stack(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        samples = [sample("right", RIGHT), sample("wrong", WRONG), sample("prints", PRINTS)]
        results = stack.grade(samples)
        assert all(len(results.get(s.key, [])) == 1 for s in samples), results
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        end = time.monotonic() + 20
        while time.monotonic() < end and len(ledger.history(assignment="is_prime")) < 3:
            time.sleep(0.2)
        stack.samples = samples
        stack.results = results
        yield stack
    finally:
        stack.close()


def login_in_browser(page, stack) -> None:
    page.goto(stack.url + "dashboard/?result=incorrect")
    assert page.exists("input[name=password]"), "the login form"
    page.type("input[name=username]", "xgrader")
    page.type("input[name=password]", stack.password)
    page.click("form button")


def shot(page, tmp_path: Path, name: str) -> Path:
    path = (SHOTS or tmp_path) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    return path


def table(page, selector: str) -> list[list[str]]:
    """The text of each body row's cells."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", page.outer_html(selector), re.S)
    return [[html.unescape(re.sub(r"<[^>]*>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
            for r in rows if "<td" in r]


def attribute(page, selector: str, name: str) -> str | None:
    m = re.search(rf"\s{name}=\"([^\"]*)\"", page.outer_html(selector).split(">", 1)[0])
    return html.unescape(m.group(1)) if m else None


def test_find_a_wrong_submission_and_its_full_feedback(graded_stack, browser, tmp_path):
    stack = graded_stack
    page = browser.new_page(javascript=False)   # the dashboard needs no JavaScript
    login_in_browser(page, stack)
    # back on the list, filtered to incorrect results (the `next` of the login form)
    assert page.url.split("?")[0].endswith("/xqueue/dashboard/")
    rows = table(page, "#submissions")
    assert len(rows) == 2 and all(r[2] == "is_prime" for r in rows), rows
    assert "page 1 of 1 (2 submissions)" in page.text("#page-info")
    shot(page, tmp_path, "dashboard-list.png")

    # filter by student through the form
    page.type("#f-student", "demo-wrong")
    page.click("form.filters button")
    rows = table(page, "#submissions")
    assert len(rows) == 1 and rows[0][3] == "demo-wrong"
    sid = rows[0][0]
    page.click(f"#submissions a[href$='/submission/{sid}/']")
    assert page.url.endswith(f"/xqueue/submission/{sid}/")

    delivered = stack.results[stack.samples[1].key][0]
    assert page.text("#fact-student") == "demo-wrong"
    assert page.text("#fact-assignment") == "is_prime"
    assert page.text("#fact-pulls") == "1" and page.text("#fact-puts") == "1"
    assert f"score {delivered['score']:g}," in page.text("#verdict").replace(".0,", ",")
    # the feedback as the student sees it: the delivered msg, whole, in a sandboxed frame
    assert attribute(page, "#feedback", "srcdoc") == delivered["msg"]
    assert attribute(page, "#feedback", "sandbox") == ""
    # staff view: hidden tests with their status, from the ledger
    staff = table(page, "#staff-tests")
    hidden = {name: status for name, shown, status, *_ in staff if shown == "hidden"}
    assert hidden.get("test_squares_of_primes") == "failed", staff
    assert len(staff) == 17
    assert "delivered" in page.text("#delivery")
    assert page.count("#delivery-attempts tr") == 2     # head + one attempt
    history = table(page, "#ledger-history")
    assert len(history) == 1 and history[0][2] == "daemon"
    assert "all(n % d" in page.text("#student-response")
    shot(page, tmp_path, "dashboard-detail.png")

    # the regrade action: queued again as a copy that a grader grades; the form's regrade id
    # makes a resubmit a no-op
    form_id = attribute(page, "input[name=regrade_id]", "value")
    page.click("#regrade-button")
    assert "Regrade queued as" in page.text("#flash")
    new_sid = attribute(page, "#regrade-link", "href").strip("/").split("/")[-1]
    assert new_sid.isdigit() and new_sid != sid
    end = time.monotonic() + 60
    while time.monotonic() < end:
        page.goto(stack.url + f"submission/{new_sid}/")
        if page.exists("#delivery") and "delivered" in page.text("#delivery") and page.exists("#ledger-history"):
            break
        time.sleep(0.5)
    assert "delivered" in page.text("#delivery")
    assert f"regrade of submission #{sid}" in page.text("#regrade-of").lower()
    assert page.text("#fact-student") == "demo-wrong" and page.text("#fact-puts") == "1"
    assert page.count("#ledger-history tr") == 2        # head + its grading
    assert page.count("#student-attempts tr") == 3      # the student's two gradings of is_prime
    page.goto(stack.url + f"submission/{sid}/")
    assert page.count("#regrades tr") == 2 and f"#{new_sid}" in page.text("#regrades")
    deliveries = [body for k, v in stack.receiver.results.items() for body in v if k == stack.samples[1].key]
    assert len(deliveries) == 2          # the first result and the regrade's, each delivered once, same LMS key

    # the same form again (a double submit): refused as a duplicate, nothing queued
    cookies = {c["name"]: c["value"] for c in page.send("Network.getCookies", {"urls": [stack.url]})["cookies"]}
    resubmit = requests.Session()
    resubmit.cookies.update(cookies)
    page_html = resubmit.get(stack.url + f"submission/{sid}/", timeout=10).text
    token = re.search(r"name='csrf' value='([0-9a-f]+)'", page_html).group(1)
    again = resubmit.post(stack.url + f"submission/{sid}/regrade/", data={"csrf": token, "regrade_id": form_id},
                          allow_redirects=False, timeout=10)
    assert again.status_code == 303 and again.headers["Location"].endswith("regrade=duplicate")


def test_dashboard_refusals(graded_stack):
    stack = graded_stack
    anonymous = requests.get(stack.url + "dashboard/", timeout=10)
    assert "name='password'" in anonymous.text and "<table id='submissions'" not in anonymous.text
    detail = requests.get(stack.url + "submission/1/", timeout=10)
    assert "staff-tests" not in detail.text
    posted = requests.post(stack.url + "submission/1/regrade/", data={"regrade_id": "x"}, timeout=10,
                           allow_redirects=False)
    assert posted.status_code == 200 and "name='password'" in posted.text   # the login page, nothing done

    s = stack.session   # logged in (grader credentials)
    page = s.get(stack.url + "submission/1/", timeout=10)
    assert page.status_code == 200
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    token = re.search(r"name='csrf' value='([0-9a-f]+)'", page.text).group(1)
    for data, headers in (({"regrade_id": "r1"}, {}),                                   # no token
                          ({"regrade_id": "r1", "csrf": "0" * 64}, {}),                 # a wrong one
                          ({"regrade_id": "r1", "csrf": token}, {"Origin": "http://evil.example"})):
        refused = s.post(stack.url + "submission/1/regrade/", data=data, headers=headers, timeout=10,
                         allow_redirects=False)
        assert refused.status_code == 403, (data, headers)
    assert s.get(stack.url + "submission/1/", timeout=10).text.count("<tr><td>") >= 0
    with s.get(stack.url + "submission/999999/", timeout=10) as missing:
        assert missing.status_code == 404
    assert s.get(stack.url + "submission/abc/", timeout=10).status_code == 404
    assert s.get(stack.url + "submission/1/regrade/", timeout=10).status_code == 405
    # filters that match nothing, and nonsense values, are harmless
    empty = s.get(stack.url + "dashboard/", params={"assignment": "nope", "state": "bogus", "page": "x",
                                                    "since": "not-a-date"}, timeout=10)
    assert empty.status_code == 200 and "No submission matches" in empty.text


def test_feedback_html_cannot_script_the_dashboard(tmp_path):
    """A grader reply carrying markup is shown inert: escaped into the
    sandboxed frame's srcdoc, under a CSP without scripts."""
    from xgrader.queue_server import QueueServer, QueueServerConfig

    server = QueueServer(QueueServerConfig(port=0, db=tmp_path / "q.db", queues=["q"],
                                           users={"u": "pw"})).start()
    try:
        s = requests.Session()
        s.post(server.url + "login/", data={"username": "u", "password": "pw"}, timeout=10)
        header = json.dumps({"lms_callback_url": server.url + "lms-callback/k", "lms_key": "k", "queue_name": "q"})
        body = json.dumps({"student_response": "<script>alert(1)</script>",
                           "grader_payload": json.dumps({"grader": "x'><img src=x onerror=alert(2)>"}),
                           "student_info": json.dumps({"anonymous_student_id": "<b>s</b>"})})
        s.post(server.url + "submit/", data={"xqueue_header": header, "xqueue_body": body}, timeout=10)
        pulled = json.loads(json.loads(s.get(server.url + "get_submission/", params={"queue_name": "q"},
                                             timeout=10).text)["content"])
        reply = json.dumps({"correct": False, "score": 0, "msg": "<script>alert(3)</script><p>x</p>"})
        s.post(server.url + "put_result/", data={"xqueue_header": pulled["xqueue_header"], "xqueue_body": reply},
               timeout=10)
        html = s.get(server.url + "submission/1/", timeout=10).text
        listing = s.get(server.url + "dashboard/", timeout=10).text
    finally:
        server.stop()
    for text in (html, listing):
        assert "<script>" not in text and "<img src=x" not in text and "<b>s</b>" not in text
    assert "srcdoc='&lt;script&gt;alert(3)&lt;/script&gt;&lt;p&gt;x&lt;/p&gt;'" in html
    assert "no attempt ledger configured" in html


def test_list_pages_and_filters_over_many_submissions(tmp_path):
    from xgrader.queue_server import QueueServer, QueueServerConfig

    server = QueueServer(QueueServerConfig(port=0, db=tmp_path / "q.db", queues=["q"], users={"u": "pw"},
                                           dashboard_page_size=25)).start()
    try:
        store = server.store
        for i in range(130):
            body = json.dumps({"student_response": f"# {i}", "grader_payload": json.dumps(
                {"grader": "is_prime" if i % 2 else "sum_digits"}),
                "student_info": json.dumps({"anonymous_student_id": f"s{i % 7}"})})
            sid, _ = store.submit("q", f"http://127.0.0.1:1/cb/{i}", f"k{i}", "{}", body)
            if i % 3 == 0:
                pulled = store.pull("q", 60)
                store.put_result(pulled.id, pulled.key, json.dumps({"correct": i % 6 == 0, "score": i, "msg": ""}))
        s = requests.Session()
        s.post(server.url + "login/", data={"username": "u", "password": "pw"}, timeout=10)

        def ids(**params) -> tuple[list[int], str]:
            text = s.get(server.url + "dashboard/", params=params, timeout=10).text
            info = re.search(r"page (\d+) of (\d+) \((\d+) submissions\)", text)
            return [int(x) for x in re.findall(r"data-id='(\d+)'", text)], info.group(0)

        first, info = ids()
        assert info == "page 1 of 6 (130 submissions)" and first == list(range(130, 105, -1))
        last, info = ids(page=6)
        assert info == "page 6 of 6 (130 submissions)" and last == list(range(5, 0, -1))
        assert len(ids(assignment="is_prime")[0]) == 25 and ids(assignment="is_prime")[1].endswith("(65 submissions)")
        student, _ = ids(student="s3")
        assert student and all((i - 1) % 7 == 3 for i in student)
        assert ids(state="answered")[1].endswith("(44 submissions)")
        assert ids(state="waiting")[1].endswith("(86 submissions)")
        assert ids(result="correct")[1].endswith("(22 submissions)")
        assert ids(result="incorrect")[1].endswith("(22 submissions)")
        assert ids(result="incorrect", assignment="is_prime")[1].endswith("(22 submissions)")
        today = time.strftime("%Y-%m-%d", time.gmtime())
        assert ids(since=today, until=today)[1].endswith("(130 submissions)")
        assert ids(until="2000-01-01")[1].endswith("(0 submissions)")
    finally:
        server.stop()
