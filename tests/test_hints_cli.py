"""`xgrader hints` over the real store, the pipeline path (hint escaped and
labelled in msg, grade untouched) and the daemon wiring."""

from __future__ import annotations

import json

from tests.support.fake_llm import Reply
from tests.test_hints import (  # noqa: F401 (fixtures shared with the stage tests)
    make_stage, request, sqlite_url, squares, wrong_report,
)
from xgrader import pipeline
from xgrader.cli.main import main
from xgrader.config import HintSettings, Settings
from xgrader.daemon import wiring
from xgrader.feedback import HINT_LABEL
from xgrader.hints import HintStage
from xgrader.hooks import Hooks


def test_staff_list_show_block_disable(squares, wrong_report, fake_llm, sqlite_url, capsys, tmp_path):  # noqa: F811
    stage, _ = make_stage(squares, fake_llm, sqlite_url)
    fake_llm.script = [Reply.hint("```x```")]
    delivered = stage.apply(request(), wrong_report)
    assert delivered.hint
    capsys.readouterr()

    assert main(["hints", "--store", sqlite_url, "list"]) == 0
    out = capsys.readouterr().out
    assert "squares" in out and "delivered" in out and delivered.hint[:40] in out
    decision = stage.store.audit_list(limit=1)[0].id

    assert main(["hints", "--store", sqlite_url, "show", str(decision)]) == 0
    out = capsys.readouterr().out
    assert "verdict: code block" in out and "verdict: ok" in out       # both calls, both verdicts
    assert "[system]" in out and "student code" in out and "```x```" in out

    assert main(["hints", "--store", sqlite_url, "show", str(decision), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "delivered"

    # The config file names the store (the daemon's own setting).
    config = tmp_path / "xgrader.toml"
    config.write_text(f'[hints]\nstore = "{sqlite_url}"\n')
    assert main(["hints", "--config", str(config), "block", str(decision)]) == 0
    assert "blocked" in capsys.readouterr().out
    assert stage.store.audit_get(decision).blocked
    stage.apply(request(student="anon-2"), wrong_report)          # not served from the cache
    assert len(fake_llm.requests) == 3

    assert main(["hints", "--store", sqlite_url, "disable", "squares"]) == 0
    assert stage.apply(request(student="anon-3"), wrong_report).hint is None
    assert main(["hints", "--store", sqlite_url, "list", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "switched off for: squares" in out and "disabled" in out
    assert main(["hints", "--store", sqlite_url, "enable", "squares"]) == 0
    assert stage.apply(request(student="anon-3"), wrong_report).hint
    capsys.readouterr()

    assert main(["hints", "--store", sqlite_url, "list", "--json", "--assignment", "squares"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["assignment"] == "squares" for line in lines)


def test_cli_errors(sqlite_url, capsys):
    assert main(["hints", "--store", sqlite_url, "show", "999"]) == 1
    assert main(["hints", "--store", sqlite_url, "block", "999"]) == 1
    assert main(["hints", "--store", "ftp://nowhere", "list"]) == 2
    assert "cannot open the hint store" in capsys.readouterr().err


def test_pipeline_posts_the_grade_with_an_escaped_labelled_hint(squares, fake_llm, sqlite_url):  # noqa: F811
    fake_llm.default = Reply.hint("Compare what happens for x < 0 & think about <b>signs</b>.")
    stage, _ = make_stage(squares, fake_llm, sqlite_url)
    req = request()
    report, reply = pipeline.grade_request(req, stage.settings, squares.backend, Hooks(), hints=stage)
    plain, plain_reply = pipeline.grade_request(req, stage.settings, squares.backend, Hooks(), hints=None)
    assert (reply.score, reply.correct) == (plain_reply.score, plain_reply.correct)
    assert report.hint and not plain.hint
    assert HINT_LABEL in reply.msg
    assert "x &lt; 0 &amp; think about &lt;b&gt;signs&lt;/b&gt;" in reply.msg and "<b>signs" not in reply.msg


def test_daemon_wiring_builds_the_stage_only_when_enabled(tmp_path):
    store = f"sqlite:///{tmp_path / 'h.db'}"
    off = Settings(hints=HintSettings(store=store))
    assert wiring.build_hints(off, Hooks()) is None
    on = Settings(hints=HintSettings(enabled=True, store=store, base_url="http://127.0.0.1:9/v1"))
    assert isinstance(wiring.build_hints(on, Hooks()), HintStage)
    # Unusable hint settings cost the hints, not the daemon.
    bad = Settings(hints=HintSettings(enabled=True, store="postgres://x"))
    assert wiring.build_hints(bad, Hooks()) is None


def test_grade_hints_previews_a_hint_against_the_configured_endpoint(squares, fake_llm, tmp_path):  # noqa: F811
    import os
    import subprocess
    import sys

    from tests.support.fake_llm import GOOD

    code = tmp_path / "wrong.py"
    code.write_text(__import__("tests.test_hints", fromlist=["WRONG"]).WRONG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XGRADER_")}
    env.update({"XGRADER_HINTS__BASE_URL": fake_llm.url, "XGRADER_HINTS__MODEL": "fake-model",
                "XGRADER_HINTS__API_KEY": "sk-preview", "XDG_CACHE_HOME": str(tmp_path / "cache"),
                # the daemon's store must stay untouched by a preview
                "XGRADER_HINTS__STORE": f"sqlite:///{tmp_path / 'daemon-hints.db'}"})
    cmd = [sys.executable, "-m", "xgrader", "grade", "--handlers", str(squares.root), "--sandbox", "bwrap",
           "--payload", '{"grader": "squares"}', str(code)]
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert HINT_LABEL not in json.loads(plain.stdout)["msg"] and fake_llm.requests == []

    proc = subprocess.run(cmd + ["--hints"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["score"] == json.loads(plain.stdout)["score"]
    assert HINT_LABEL in reply["msg"] and json.loads(GOOD.content)["hint"][:40] in reply["msg"]
    assert len(fake_llm.requests) == 1 and fake_llm.requests[0]["model"] == "fake-model"
    assert "hint: delivered (debugging, model fake-model, 1 call(s)" in proc.stderr
    assert not (tmp_path / "daemon-hints.db").exists()

    fake_llm.default = Reply.hint("```python\nreturn 0\n```")           # rejected twice: no hint, reasons shown
    proc = subprocess.run(cmd + ["--hints", "--text"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and HINT_LABEL not in proc.stdout
    assert "hint: guard_rejected" in proc.stderr and "hint rejected: code block" in proc.stderr
