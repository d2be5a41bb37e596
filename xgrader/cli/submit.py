"""`xgrader submit`: submit to a queue the way the LMS does."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit", help="submit like the LMS does; prints the submission id",
        description="Log in to an xqueue-compatible server and POST submit/ like the LMS: a single "
        "text FILE becomes student_response; several files (or a binary one) are uploaded as "
        "multipart file fields. Prints the submission id (the bundled server names it in an "
        "X-Xgrader-Submission-Id reply header; other servers: '?'), the lms_key and the queue length.")
    p.add_argument("--server", required=True, help="queue URL, e.g. http://127.0.0.1:18040/xqueue/")
    p.add_argument("--user", required=True, metavar="NAME:PASSWORD",
                   help="LMS login (or NAME only, with the password in XGRADER_SUBMIT_PASSWORD)")
    p.add_argument("--queue", required=True, help="queue name")
    p.add_argument("--payload", required=True,
                   help="grader_payload text, e.g. '{\"grader\": \"hello\"}' or a bare assignment name")
    p.add_argument("--student", default="student", help="anonymous_student_id (default 'student')")
    p.add_argument("--callback", help="lms_callback_url the server posts the result to "
                   "(default: SERVER/lms-callback/<lms_key>, which the bundled server accepts and discards)")
    p.add_argument("--lms-key", help="lms_key (default: random)")
    p.add_argument("--files", action="store_true", help="upload even a single text file as a file")
    p.add_argument("files_", nargs="+", metavar="FILE", help="the submission")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    import requests

    name, sep, password = args.user.partition(":")
    if not sep:
        password = os.environ.get("XGRADER_SUBMIT_PASSWORD", "")
    paths = [Path(f) for f in args.files_]
    for path in paths:
        if not path.is_file():
            print(f"xgrader submit: no such file: {path}", file=sys.stderr)
            return 2
    student_response, files = "", {}
    text = None
    if len(paths) == 1 and not args.files:
        try:
            text = paths[0].read_text()
        except UnicodeDecodeError:
            text = None
    if text is not None:
        student_response = text
    else:
        files = {p.name: (p.name, p.read_bytes()) for p in paths}

    server = args.server if args.server.endswith("/") else args.server + "/"
    lms_key = args.lms_key or secrets.token_hex(8)
    callback = args.callback or f"{server}lms-callback/{lms_key}"
    header = {"lms_callback_url": callback, "lms_key": lms_key, "queue_name": args.queue}
    body = {
        "student_response": student_response,
        "grader_payload": args.payload,
        "student_info": json.dumps({"anonymous_student_id": args.student,
                                    "submission_time": time.strftime("%Y%m%d%H%M%S", time.gmtime()),
                                    "random_seed": 1}),
    }
    session = requests.Session()
    try:
        session.get(server + "login/", timeout=10)  # csrftoken cookie on edx-submissions
        code, content, _ = _post(session, server + "login/", {"username": name, "password": password})
        if code != 0:
            print(f"xgrader submit: login refused: {content}", file=sys.stderr)
            return 1
        code, content, sid = _post(session, server + "submit/",
                                   {"xqueue_header": json.dumps(header), "xqueue_body": json.dumps(body)},
                                   files=files or None)
    except (requests.RequestException, ValueError) as exc:
        print(f"xgrader submit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if code != 0:
        print(f"xgrader submit: refused: {content}", file=sys.stderr)
        return 1
    print(f"submission_id={sid} lms_key={lms_key} queue_length={content}")
    return 0


def _post(session, url: str, data: dict, files: dict | None = None) -> tuple[int, object, str]:
    token = session.cookies.get("csrftoken")
    headers = {"Referer": url.rsplit("/", 2)[0] + "/"}
    if token:
        headers["X-CSRFToken"] = token
    resp = session.post(url, data=data, files=files, headers=headers, timeout=30, allow_redirects=False)
    reply = json.loads(resp.text)
    return int(reply["return_code"]), reply["content"], resp.headers.get("X-Xgrader-Submission-Id", "?")
