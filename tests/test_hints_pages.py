"""The hint pages over real HTTP: the bundled queue server on loopback with
the pages mounted, hints delivered by the real stage (bwrap grading, the fake
Chat Completions server), a real SQLite store. Every bad input is a clear
4xx and changes nothing."""

from __future__ import annotations

import re
import time
from unittest import mock

import pytest
import requests

from tests.test_hints import (  # noqa: F401 (fixtures shared with the stage tests)
    make_stage, request, squares, wrong_report,
)
from xgrader.hints.links import HintLinks
from xgrader.hints.records import EscalationState
from xgrader.queue_server import QueueServer, QueueServerConfig
from xgrader.queue_server.hint_routes import attach_hint_pages

SECRET = "s3cret-" + "x" * 40
STAFF = {"ana": "ana-pw", "bo": "bo-pw"}


class Env:
    def __init__(self, server: QueueServer, stage, report) -> None:
        self.server, self.stage, self.report = server, stage, report
        self.store = stage.store
        self.base = f"http://127.0.0.1:{server.port}"

    def deliver(self, student: str = "anon-1", n: int = 0):
        code = request().student_response + f"\n# version {student} {n}\n"
        out = self.stage.apply(request(code, student=student, submission_id=f"{student}-{n}"), self.report)
        assert out.hint and out.hint_link and out.hint_link.startswith(self.base + "/hints/h/")
        audit_id = self.stage.links.verify(out.hint_link.rsplit("/", 1)[1])
        return out.hint_link, audit_id

    def state(self, audit_id: int) -> tuple:
        """Everything a request could change about one hint."""
        esc = self.store.escalation_for(audit_id)
        rating = self.store.rating_get(audit_id)
        return (rating and rating.helpful, esc and esc.model_dump())

    def staff(self, user: str) -> requests.Session:
        s = requests.Session()
        r = s.post(self.base + "/xqueue/login/", data={"username": user, "password": STAFF[user]}, timeout=10)
        assert r.json()["return_code"] == 0
        return s


@pytest.fixture
def env(squares, wrong_report, fake_llm, tmp_path):  # noqa: F811
    server = QueueServer(QueueServerConfig(port=0, db=tmp_path / "queue.db", users=STAFF)).start()
    stage, _ = make_stage(squares, fake_llm, f"sqlite:///{tmp_path / 'hints.db'}",
                          page_url=f"http://127.0.0.1:{server.port}/hints/", link_secret=SECRET,
                          escalations_per_assignment=2, note_max_chars=200)
    attach_hint_pages(server.app, stage.cfg)
    yield Env(server, stage, wrong_report)
    server.stop()


def form_of(page: str) -> dict[str, str]:
    return dict(re.findall(r"<input type='hidden' name='(\w+)' value='([^']*)'>", page)[:2])


def open_page(link: str, session: requests.Session | None = None) -> tuple[requests.Session, dict[str, str]]:
    s = session or requests.Session()
    r = s.get(link, timeout=10)
    assert r.status_code == 200, r.text
    return s, form_of(r.text)


def test_student_page_rates_escalates_and_shows_the_answer(env):
    link, audit_id = env.deliver()
    s = requests.Session()
    r = s.get(link, timeout=10)
    assert r.status_code == 200 and "Was this hint helpful?" in r.text
    assert "Look at what your function returns" in r.text and "AI-generated hint" in r.text
    assert "default-src 'none'" in r.headers["Content-Security-Policy"] and r.headers["Cache-Control"] == "no-store"
    cookie = [c for c in s.cookies if c.name == "xgrader_hint"][0]
    assert cookie.path == "/hints/" and cookie.has_nonstandard_attr("HttpOnly")
    assert "<script" not in r.text.lower()                              # works without JavaScript
    r = s.post(link, data={**form_of(r.text), "action": "rate", "rating": "unhelpful"}, allow_redirects=False,
               timeout=10)
    assert r.status_code == 303 and r.headers["Location"].endswith(link.split("127.0.0.1")[1].split("/", 1)[1])
    page = s.get(link, timeout=10).text
    assert "You rated this hint <strong>not helpful" in page and "id='note'" in page
    r = s.post(link, data={**form_of(page), "action": "escalate", "note": "Why squares?\r\nI multiply."},
               timeout=10)
    assert r.status_code == 200 and "Waiting for the course staff" in r.text and "Why squares?\nI multiply." in r.text
    esc = env.store.escalation_for(audit_id)
    assert esc.state is EscalationState.waiting and esc.student == "anon-1" and esc.note == "Why squares?\nI multiply."
    # The staff answer shows on the same page.
    env.store.escalation_act(esc.id, "answer", "ana", "Square means x * x, not x * 2.")
    page = s.get(link, timeout=10).text
    assert "<blockquote id='answer'>Square means x * x, not x * 2.</blockquote>" in page and "Answered on" in page
    delivery = env.store.delivery_get(audit_id)
    assert delivery.student == "anon-1" and "anon-1" not in link      # the link carries no personal data


@pytest.mark.parametrize("change", ["signature", "id", "truncate", "garbage"])
def test_tampered_link_is_refused(env, change):
    link, audit_id = env.deliver()
    other_link, other_id = env.deliver("anon-2")
    head, token = link.rsplit("/", 1)
    payload, stamp, sig = token.split(".")
    bad = {"signature": f"{payload}.{stamp}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}",
           "id": f"{other_link.rsplit('/', 1)[1].split('.')[0]}.{stamp}.{sig}",
           "truncate": token[:-5], "garbage": "x" * 300}[change]
    s, form = open_page(link)
    before = env.state(audit_id), env.state(other_id)
    assert s.get(f"{head}/{bad}", timeout=10).status_code == 403
    r = s.post(f"{head}/{bad}", data={**form, "action": "rate", "rating": "helpful"}, timeout=10)
    assert r.status_code == 403 and "not valid" in r.text
    assert (env.state(audit_id), env.state(other_id)) == before == ((None, None), (None, None))


def test_expired_link_is_refused(env):
    _, audit_id = env.deliver()
    with mock.patch("time.time", return_value=time.time() - env.stage.cfg.link_ttl_s - 60):
        old = env.stage.links.url(audit_id)
    s = requests.Session()
    r = s.get(old, timeout=10)
    assert r.status_code == 410 and "expired" in r.text
    r = s.post(old, data={"hint": str(audit_id), "action": "rate", "rating": "helpful"}, timeout=10)
    assert r.status_code == 410 and env.state(audit_id) == (None, None)
    # A link signed with another secret (another deployment) is not valid here.
    foreign = HintLinks("another-secret-" + "y" * 40, env.stage.cfg.page_url, 3600).url(audit_id)
    assert requests.get(foreign, timeout=10).status_code == 403


def test_replayed_post_and_double_submit_are_refused(env):
    link, audit_id = env.deliver()
    s, form = open_page(link)
    rate = {**form, "action": "rate", "rating": "unhelpful"}
    assert s.post(link, data=rate, allow_redirects=False, timeout=10).status_code == 303
    replay = s.post(link, data=rate, allow_redirects=False, timeout=10)
    assert replay.status_code == 409 and "already sent" in replay.text
    # The same rating from a fresh form: one rating per hint.
    again = s.post(link, data={**open_page(link, s)[1], "action": "rate", "rating": "helpful"}, timeout=10)
    assert again.status_code == 409 and "already been rated" in again.text
    assert env.state(audit_id)[0] is False
    # A double-clicked "send": the second copy changes nothing.
    ask = {**open_page(link, s)[1], "action": "escalate", "note": "first"}
    spare = open_page(link, s)[1]                            # a second tab, still open
    codes = [s.post(link, data=ask, allow_redirects=False, timeout=10).status_code for _ in range(2)]
    assert codes == [303, 409]
    assert env.store.escalations_count("anon-1", "squares") == 1
    second = s.post(link, data={**spare, "action": "escalate", "note": "second"}, timeout=10)
    assert second.status_code == 409 and "already asked" in second.text
    assert env.store.escalation_for(audit_id).note == "first"


def test_rating_someone_elses_hint_is_refused(env):
    mine, my_id = env.deliver("anon-1")
    theirs, their_id = env.deliver("anon-2")
    s, my_form = open_page(mine)
    # My page's form, pointed at their hint's number: refused.
    r = s.post(mine, data={**my_form, "hint": str(their_id), "action": "rate", "rating": "helpful"}, timeout=10)
    assert r.status_code == 403 and "another hint" in r.text
    # My form token replayed on their link (with their number): refused too.
    r = s.post(theirs, data={**my_form, "hint": str(their_id), "action": "rate", "rating": "helpful"}, timeout=10)
    assert r.status_code == 403 and "another hint" in r.text
    assert env.state(my_id) == env.state(their_id) == (None, None)


def test_csrf_needs_the_token_and_the_cookie(env):
    link, audit_id = env.deliver()
    s, form = open_page(link)
    stranger = requests.Session()                          # another browser: no cookie, or its own
    r = stranger.post(link, data={**form, "action": "rate", "rating": "helpful"}, timeout=10)
    assert r.status_code == 403 and "CSRF" in r.text
    open_page(link, stranger)
    r = stranger.post(link, data={**form, "action": "rate", "rating": "helpful"}, timeout=10)
    assert r.status_code == 403
    r = s.post(link, data={"hint": str(audit_id), "action": "rate", "rating": "helpful"}, timeout=10)
    assert r.status_code == 403
    r = s.post(link, data={**form, "csrf": form["csrf"][:-3] + "abc", "action": "rate", "rating": "helpful"},
               timeout=10)
    assert r.status_code == 403 and env.state(audit_id) == (None, None)
    assert s.post(link, data={**form, "action": "rate", "rating": "maybe"}, timeout=10).status_code == 400
    assert s.post(link, data={**form, "action": "delete"}, timeout=10).status_code == 400
    assert s.put(link, data=form, timeout=10).status_code == 405
    assert env.state(audit_id) == (None, None)


def test_oversized_note_is_refused(env):
    link, audit_id = env.deliver()
    s, form = open_page(link)
    s.post(link, data={**form, "action": "rate", "rating": "unhelpful"}, timeout=10)
    form = open_page(link, s)[1]
    r = s.post(link, data={**form, "action": "escalate", "note": "x" * 201}, timeout=10)
    assert r.status_code == 400 and "at most 200" in r.text
    r = s.post(link, data={**form, "action": "escalate", "note": "x" * 300_000}, timeout=10)
    assert r.status_code == 413
    assert env.store.escalation_for(audit_id) is None
    # Not consumed by the refusals: the same form, shortened, goes through.
    assert s.post(link, data={**form, "action": "escalate", "note": "x" * 200}, allow_redirects=False,
                  timeout=10).status_code == 303


def test_escalations_stop_at_the_quota(env):
    s = requests.Session()
    for n in range(3):
        link, audit_id = env.deliver("anon-q", n)
        form, spare = open_page(link, s)[1], open_page(link, s)[1]
        s.post(link, data={**form, "action": "rate", "rating": "unhelpful"}, timeout=10)
        page = s.get(link, timeout=10).text
        if n < 2:
            r = s.post(link, data={**form_of(page), "action": "escalate", "note": f"q{n}"}, timeout=10)
            assert r.status_code == 200
        else:   # the page says so, and a request sent anyway is refused
            assert "which is the limit" in page and "id='note'" not in page
            r = s.post(link, data={**spare, "action": "escalate", "note": "q2"}, timeout=10)
            assert r.status_code == 429 and env.store.escalation_for(audit_id) is None
    assert env.store.escalations_count("anon-q", "squares") == 2


HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)> & \"quotes\""


def test_html_in_a_note_is_stored_as_written_and_shown_escaped(env):
    link, audit_id = env.deliver()
    s, form = open_page(link)
    s.post(link, data={**form, "action": "rate", "rating": "unhelpful"}, timeout=10)
    page = s.post(link, data={**open_page(link, s)[1], "action": "escalate", "note": HOSTILE}, timeout=10).text
    esc = env.store.escalation_for(audit_id)
    assert esc.note == HOSTILE                                            # stored as written
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; &quot;"
    assert escaped in page and "<script>" not in page and "<img" not in page
    staff = env.staff("ana")
    detail = staff.get(f"{env.base}/hints/staff/{esc.id}", timeout=10).text
    assert escaped in detail and "<script>" not in detail and "<img" not in detail
    listing = staff.get(f"{env.base}/hints/staff/", timeout=10).text
    assert "&lt;script&gt;" in listing and "<script>" not in listing
    # An answer with HTML is escaped on the student page too.
    env.store.escalation_act(esc.id, "answer", "ana", "<b>bold</b> <script>x()</script>")
    page = s.get(link, timeout=10).text
    assert "&lt;b&gt;bold&lt;/b&gt; &lt;script&gt;x()&lt;/script&gt;" in page and "<b>bold" not in page


def test_staff_pages_need_login_csrf_and_respect_claims(env):
    link, audit_id = env.deliver()
    s, form = open_page(link)
    s.post(link, data={**form, "action": "rate", "rating": "unhelpful"}, timeout=10)
    s.post(link, data={**open_page(link, s)[1], "action": "escalate", "note": "help"}, timeout=10)
    esc = env.store.escalation_for(audit_id)
    url = f"{env.base}/hints/staff/{esc.id}"
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 200 and "name='password'" in anonymous.text and "help" not in anonymous.text
    assert requests.post(url, data={"action": "claim"}, timeout=10).status_code == 403
    ana, bo = env.staff("ana"), env.staff("bo")
    page = ana.get(url, timeout=10).text
    assert "help" in page and "square_sum" in page and "Feedback the student saw" in page
    assert "hidden" in page and "982007569" in page            # the hidden test, for staff only
    csrf = form_of(page)["csrf"]
    bo_csrf = form_of(bo.get(url, timeout=10).text)["csrf"]     # bo has the page open too
    assert ana.post(url, data={"action": "claim", "csrf": "forged"}, timeout=10).status_code == 403
    assert bo.post(url, data={"action": "claim", "csrf": csrf}, timeout=10).status_code == 403  # ana's token
    assert env.store.escalation_get(esc.id).state is EscalationState.waiting
    assert ana.post(url, data={"action": "claim", "csrf": csrf}, allow_redirects=False, timeout=10).status_code == 303
    assert "Only ana can answer" in bo.get(url, timeout=10).text
    r = bo.post(url, data={"action": "answer", "text": "mine", "csrf": bo_csrf}, timeout=10)
    assert r.status_code == 409 and "claimed by ana" in r.text
    r = ana.post(url, data={"action": "answer", "text": "Square each number.", "csrf": csrf}, timeout=10)
    assert r.status_code == 200 and "answered by ana" in r.text
    again = ana.post(url, data={"action": "answer", "text": "twice", "csrf": csrf}, timeout=10)
    assert again.status_code == 409
    assert env.store.escalation_get(esc.id).answer == "Square each number."
    assert "Square each number." in s.get(link, timeout=10).text
    assert ana.get(f"{env.base}/hints/staff/999", timeout=10).status_code == 404


def test_feedback_links_the_hint_page_and_shows_staff_answers_escaped():
    import xml.etree.ElementTree as ET

    from xgrader import feedback
    from xgrader.report import GradeReport, Outcome, StaffAnswer

    report = GradeReport(assignment="a", title="A", outcome=Outcome.failed, score=0, max_score=1, hint="h <b>",
                         hint_link="https://g.example/hints/h/abc.def-_x?a=1&b=2",
                         staff_answers=[StaffAnswer(question="<q>", answer="<script>x()</script>")])
    out = feedback.render_html(report)
    ET.fromstring(out)                                              # still one well-formed element
    assert '<a href="https://g.example/hints/h/abc.def-_x?a=1&amp;b=2" target="_blank"' in out
    assert out.count("<a ") == 1 and feedback.HINT_LINK_TEXT in out
    assert feedback.ANSWER_LABEL in out and "&lt;script&gt;x()&lt;/script&gt;" in out and "<script>" not in out
    assert out.index(feedback.ANSWER_LABEL) < out.index(feedback.HINT_LABEL)
    for bad in ("javascript:alert(1)", "data:text/html,x", "//evil.example/"):
        assert "<a " not in feedback.render_html(report.model_copy(update={"hint_link": bad}))
    text = feedback.render_text(report)
    assert f"{feedback.HINT_LINK_TEXT}: https://g.example/hints/h/abc" in text and "<script>x()</script>" in text
