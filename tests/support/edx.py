"""A real edx-submissions server (the xqueue API Open edX serves from the LMS
itself) on loopback: a minimal Django project on SQLite, generated into a
temporary folder, mounting `submissions.urls` at /xqueue/, run with
Django's runserver as a test peer. What the LMS would do is a few test-only
views beside it (/lms/...): create a submission with
`submissions.api.create_external_grader_detail`, read back its state and
recorded scores, and age a pulled submission's lease (edx-submissions
serves a pulled submission again once its status_time is 5 minutes old;
moving that time back stands in for waiting).

The request log (runserver's, one line per request) is kept in
`EdxServer.log` for counting calls.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

GRADER = ("grader", "grader-pw")
NOT_IN_GROUP = ("outsider", "outsider-pw")

SETTINGS = """
import os
SECRET_KEY = "xgrader-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
    "rest_framework", "submissions",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "xg_edx.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["XG_EDX_DB"],
                         "OPTIONS": {"timeout": 30}}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
MEDIA_ROOT = os.environ["XG_EDX_MEDIA"]
MEDIA_URL = "/media/"
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"stderr": {"class": "logging.StreamHandler"}},
           "loggers": {"django.server": {"handlers": ["stderr"], "level": "INFO"},
                       "submissions": {"handlers": ["stderr"], "level": "WARNING"}}}
"""

URLS = """
from django.urls import include, path
from xg_edx import lms

urlpatterns = [
    path("xqueue/", include("submissions.urls")),
    path("lms/create/", lms.create),
    path("lms/state/", lms.state),
    path("lms/age/", lms.age),
]
"""

LMS = """
import json
from datetime import timedelta

from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from submissions import api
from submissions.models import ExternalGraderDetail, Score


@csrf_exempt
def create(request):
    data = json.loads(request.body)
    item = {"student_id": data.get("student", "s1"), "course_id": "course-v1:xg+t+1",
            "item_id": data.get("item", "block-v1:xg+t+1+type@problem+block@p1"), "item_type": "problem"}
    detail = api.create_external_grader_detail(
        item, data["answer"], data["queue"], data.get("queue_key", "k"),
        grader_file_name=data["grader"], points_possible=data["points_possible"])
    return JsonResponse({"id": detail.submission.id})


def state(request):
    detail = ExternalGraderDetail.objects.get(submission__id=int(request.GET["id"]))
    scores = [[s.points_earned, s.points_possible]
              for s in Score.objects.filter(submission__id=detail.submission.id).order_by("id")]
    return JsonResponse({"status": detail.status, "pullkey": detail.pullkey, "reply": detail.grader_reply,
                         "num_failures": detail.num_failures, "scores": scores})


@csrf_exempt
def age(request):
    detail = ExternalGraderDetail.objects.get(submission__id=int(request.GET["id"]))
    ExternalGraderDetail.objects.filter(pk=detail.pk).update(
        status_time=timezone.now() - timedelta(seconds=float(request.GET["seconds"])))
    return JsonResponse({"ok": True})
"""

USERS = f"""
from django.contrib.auth.models import Group, User
group, _ = Group.objects.get_or_create(name="xqueue")
user = User.objects.create_user({GRADER[0]!r}, password={GRADER[1]!r})
user.groups.add(group)
User.objects.create_user({NOT_IN_GROUP[0]!r}, password={NOT_IN_GROUP[1]!r})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EdxServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        project = root / "xg_edx"
        project.mkdir(parents=True)
        (project / "__init__.py").write_text("")
        (project / "settings.py").write_text(textwrap.dedent(SETTINGS))
        (project / "urls.py").write_text(textwrap.dedent(URLS))
        (project / "lms.py").write_text(textwrap.dedent(LMS))
        (root / "media").mkdir()
        self.env = {**os.environ, "PYTHONPATH": str(root), "DJANGO_SETTINGS_MODULE": "xg_edx.settings",
                    "XG_EDX_DB": str(root / "edx.db"), "XG_EDX_MEDIA": str(root / "media")}
        self.env.pop("XGRADER_LOG_FORMAT", None)
        self._django("migrate", "--no-input", "-v", "0")
        self._django("shell", "-c", USERS)
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.url = self.origin + "/xqueue/"
        self.log = root / "server.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def _django(self, *args: str) -> None:
        out = subprocess.run([sys.executable, "-m", "django", *args], env=self.env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{self.port}", "--noreload"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                requests.get(self.url + "login/", timeout=2)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError("edx-submissions did not start: " + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    # -- the LMS side ----------------------------------------------------------
    def create(self, queue: str, answer: str, grader: str, points_possible: int, student: str = "s1") -> int:
        r = requests.post(self.origin + "/lms/create/", timeout=30, data=json.dumps(
            {"queue": queue, "answer": answer, "grader": grader, "points_possible": points_possible,
             "student": student, "item": f"block-v1:xg+t+1+type@problem+block@{queue}-{student}"}))
        assert r.status_code == 200, r.text[-2000:]
        return r.json()["id"]

    def state(self, sid: int) -> dict:
        r = requests.get(self.origin + "/lms/state/", params={"id": sid}, timeout=30)
        assert r.status_code == 200, r.text[-2000:]
        return r.json()

    def age(self, sid: int, seconds: float = 400) -> None:
        r = requests.post(self.origin + "/lms/age/", params={"id": sid, "seconds": seconds}, timeout=30)
        assert r.status_code == 200, r.text[-2000:]

    def requests_to(self, endpoint: str, queue: str | None = None) -> list[str]:
        """runserver's log lines for requests to /xqueue/<endpoint> (of one queue)."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = re.search(r'"(GET|POST) (/xqueue/[^ ?]*)(\?[^ ]*)? HTTP/1\.1" (\d+)', line)
            if m and m.group(2) == f"/xqueue/{endpoint}" and (queue is None or f"queue_name={queue}" in line):
                out.append(line)
        return out


@pytest.fixture(scope="module")
def edx_server(tmp_path_factory):
    server = EdxServer(tmp_path_factory.mktemp("edx"))
    yield server
    server.stop()
