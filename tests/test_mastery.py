"""Mastery from graded attempts: the store (first attempts only, BKT,
problem sets, concurrent replicas on SQLite and a real PostgreSQL), the
grading path that feeds it (grade --record, batch), `xgrader mastery
report|fit`, the selector merging it, and `check`'s skill warnings."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xgrader.ledger.db import Database
from xgrader.mastery.bkt import BktParams, update
from xgrader.mastery.catalog import Skill, SkillCatalog, load_catalog
from xgrader.mastery.store import LedgerEvidence, MasteryStore, Step

ROOT = Path(__file__).resolve().parents[1]
PARAMS = BktParams(p_init=0.3, p_transit=0.1, p_slip=0.1, p_guess=0.2)
CATALOG = SkillCatalog(skills={"loops": Skill(id="loops", params=PARAMS)})


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("pg_url")


def test_first_attempts_only_update_bkt_history_and_count(store_url):
    store = MasteryStore.open(store_url)
    added = store.record_attempt("ana", "sum_digits", [Step("case 1", True, ("loops",)),
                                                       Step("case 2", False, ("loops", "signs"))], CATALOG)
    assert added == 3
    (loops,), (signs,) = store.records(skill="loops"), store.records(skill="signs")
    assert loops.opportunity_count == 2 and loops.history == 0b10   # correct, then wrong (latest = LSB)
    assert loops.p_known == pytest.approx(update(update(0.3, True, PARAMS), False, PARAMS))
    assert signs.opportunity_count == 1 and signs.history == 0 and signs.p_initial == BktParams().p_init
    # A second attempt at the same steps changes nothing, even when now right; a new step counts.
    assert store.record_attempt("ana", "sum_digits", [Step("case 2", True, ("loops",)),
                                                      Step("case 3", True, ("loops",))], CATALOG) == 1
    (loops,) = store.records(student="ana", skill="loops")
    assert loops.opportunity_count == 3 and loops.history == 0b101
    # The same test name in another assignment is another step.
    assert store.record_attempt("ana", "grade_stats", [Step("case 2", True, ("loops",))], CATALOG) == 1
    assert [o.n for o in store.opportunities(skill="loops")] == [1, 2, 3, 4]
    assert store.records(student="bob") == []


def test_problem_sets_move_p_initial_only_at_their_start(store_url):
    store = MasteryStore.open(store_url)
    store.record_attempt("ana", "a", [Step("t1", True, ("loops",))], CATALOG)
    (before,) = store.records(student="ana")
    assert before.p_initial == 0.3 and before.initial_opportunity_count == 0
    assert store.start_problem_set("ana", "Week 2") is True
    store.record_attempt("ana", "a", [Step("t2", True, ("loops",))], CATALOG)
    assert store.start_problem_set("ana", "Week 2") is False        # already started: nothing moves
    (after,) = store.records(student="ana")
    assert after.p_initial == pytest.approx(before.p_known) and after.initial_opportunity_count == 1
    assert after.opportunity_count == 2
    assert store.delete_student("ana") == 1
    assert store.records(student="ana") == [] and list(store.opportunities()) == []
    assert store.start_problem_set("ana", "Week 2") is True          # forgotten with the rest


def _writer(url: str, worker: int, tests: int) -> None:
    store = MasteryStore(Database(url))
    for i in range(tests):
        store.record_attempt("shared", f"a{worker}", [Step(f"t{i}", (i + worker) % 3 != 0, ("loops", "io"))],
                             CATALOG)


def test_concurrent_replicas_lose_no_update(store_url):
    schema = MasteryStore.open(store_url)
    schema.migrate()
    schema.db.close()   # no connection may cross a fork (as the daemon does it)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(store_url, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = {r.skill: r for r in MasteryStore.open(store_url).records(student="shared")}
    for skill in ("loops", "io"):
        assert rows[skill].opportunity_count == 60                       # 4 writers x 15 steps, none lost
        assert rows[skill].history.bit_length() <= 60
        assert bin(rows[skill].history).count("1") == sum((i + w) % 3 != 0 for w in range(4) for i in range(15))
    assert sorted(o.n for o in MasteryStore.open(store_url).opportunities(skill="io")) == list(range(1, 61))


def test_selector_merges_ledger_evidence_by_opportunities(tmp_path):
    from xgrader.selector.config import SelectorConfig
    from xgrader.selector.engine import Selector

    store = MasteryStore.open(f"sqlite:///{tmp_path / 'l.db'}")
    for i in range(12):   # ana gets loops right 12 times: far more evidence than the LMS's 4 opportunities
        store.record_attempt("anon-ana", "sum_digits", [Step(f"c{i}", True, ("loops",))], CATALOG)
    config = SelectorConfig.model_validate({
        "problems": [{"name": "p_loops", "skills": ["loops"]}, {"name": "p_if", "skills": ["ifs"]}],
        "lms_skills": {"1": "loops", "2": "ifs"}})
    req = {"skills": [{"skill_id": 1, "p_known": 0.1, "opportunity_count": 4, "history": 0,
                       "user": {"username": "ana"}},
                      {"skill_id": 2, "p_known": 0.5, "opportunity_count": 4, "history": 5,
                       "user": {"username": "ana"}}],
           "problem_set": {"name": "Set A"}, "problems": [{"name": "p_loops"}, {"name": "p_if"}]}
    lms_only = Selector(config, catalog=CATALOG)
    assert lms_only.answer(json.dumps(req))["problem_name"] == "p_loops"   # LMS: loops at 0.1, lowest
    merged = Selector(config, catalog=CATALOG, evidence=LedgerEvidence(store, CATALOG),
                      students={"ana": "anon-ana"})
    assert merged.mastery(merged_req := __import__("xgrader.selector.protocol", fromlist=["x"])
                          .parse_request(json.dumps(req)))["loops"].source == "ledger"
    assert merged.answer(json.dumps(req))["problem_name"] == "p_if"        # ledger: loops mastered
    assert merged_req.problem_set.name == "Set A"
    assert store.start_problem_set("anon-ana", "Set A") is False         # the selector started it


# --- the grading path, end to end through the CLI ----------------------------------

@pytest.fixture(scope="module")
def skilled_handlers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("handlers")
    for folder in ("sum_digits", "signatures"):   # the assignment and the shared signatures it uses
        shutil.copytree(ROOT / "payload_handlers" / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = root / "sum_digits" / "assignment.toml"
    cfg.write_text(re.sub(r"^skills = .*$", 'skills = ["digits"]', cfg.read_text(), count=1, flags=re.M))
    cases = root / "sum_digits" / "tests" / "cases.toml"
    cases.write_text(re.sub(r'(expr = "sum_digits\(-45\)"\n)skills = .*\n', r'\1skills = ["negatives"]\n',
                            cases.read_text()))
    (root / "skills.toml").write_text(textwrap.dedent("""
        [[skills]]
        id = "digits"
        title = "Taking a number apart digit by digit"
        p_init = 0.4
        [[skills]]
        id = "negatives"
        title = "Negative numbers"
    """))
    return root


def xgrader(*args: str, cwd: Path | None = None, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "-m", "xgrader", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_graded_attempts_feed_mastery_and_the_report(skilled_handlers, tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    samples = ROOT / "payload_handlers" / "sum_digits" / "samples"
    for sample in ("wrong_negative_crash.py", "correct.py"):   # the second attempt repeats the same steps
        r = xgrader("grade", "--handlers", str(skilled_handlers), "--payload", "sum_digits", "--record",
                    "--student", "ana", str(samples / sample), cwd=tmp_path, XGRADER_LEDGER__URL=url)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["correct"] is (sample == "correct.py")
    env_ledger = ["--ledger", url, "--handlers", str(skilled_handlers)]
    rows = [json.loads(line) for line in
            xgrader("mastery", "report", "--format", "json", *env_ledger, cwd=tmp_path).stdout.splitlines()]
    by_skill = {r["skill"]: r for r in rows}
    assert set(by_skill) == {"digits", "negatives"} and all(r["student"] == "ana" for r in rows)
    # first attempt only: 10 digit cases (one crashed), the negative case crashed
    assert by_skill["digits"]["opportunity_count"] == 10
    assert bin(by_skill["digits"]["history"]).count("1") == 9
    assert by_skill["negatives"]["opportunity_count"] == 1 and by_skill["negatives"]["history"] == 0
    table = xgrader("mastery", "report", *env_ledger, cwd=tmp_path).stdout
    assert "STUDENT" in table and "digits" in table
    csv_out = xgrader("mastery", "report", "--format", "csv", "--skill", "negatives", *env_ledger,
                      cwd=tmp_path).stdout.splitlines()
    assert csv_out[0].startswith("student,skill,p_known") and len(csv_out) == 2
    gone = xgrader("ledger", "delete-student", "--ledger", url, "ana", cwd=tmp_path)
    assert "their mastery of 2 skills" in gone.stdout
    assert "no mastery recorded" in xgrader("mastery", "report", *env_ledger, cwd=tmp_path).stdout


def test_batch_records_mastery_per_file(skilled_handlers, tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    folder = tmp_path / "subs"
    folder.mkdir()
    for name in ("correct.py", "wrong_offbyone.py"):
        shutil.copy(ROOT / "payload_handlers" / "sum_digits" / "samples" / name, folder / name)
    r = subprocess.run([sys.executable, "-m", "xgrader", "batch", "--handlers", str(skilled_handlers),
                        "--payload", "sum_digits", str(folder), "--out", str(tmp_path / "g.csv")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "XGRADER_LEDGER__URL": url})
    assert r.returncode == 0, r.stderr
    store = MasteryStore.open(url)
    assert {rec.student for rec in store.records()} == {"correct.py", "wrong_offbyone.py"}
    right = {rec.skill: rec for rec in store.records(student="correct.py")}
    wrong = {rec.skill: rec for rec in store.records(student="wrong_offbyone.py")}
    assert right["digits"].p_known > wrong["digits"].p_known


def test_check_flags_tests_without_a_skill(skilled_handlers, tmp_path):
    root = tmp_path / "h"
    shutil.copytree(skilled_handlers, root)
    cfg = root / "sum_digits" / "assignment.toml"
    cfg.write_text(cfg.read_text().replace('skills = ["digits"]\n', ""))
    r = xgrader("check", "--handlers", str(root), "sum_digits", cwd=tmp_path)
    assert "tests without a skill: one two three, zero, case 4" in r.stdout + r.stderr
    (root / "skills.toml").write_text('[[skills]]\nid = "digits"\n')
    r = xgrader("check", "--handlers", str(root), "sum_digits", cwd=tmp_path)
    assert "skills ['negatives'] not defined" in r.stdout + r.stderr


# --- mastery fit -----------------------------------------------------------------

def test_mastery_fit_recovers_known_parameters_and_writes_skills_toml(tmp_path):
    truth = BktParams(p_init=0.25, p_transit=0.15, p_slip=0.08, p_guess=0.22)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = MasteryStore.open(url)
    rng = random.Random(5)
    for s in range(250):
        known = rng.random() < truth.p_init
        steps = []
        for i in range(10):
            steps.append(Step(f"t{i}", rng.random() < ((1 - truth.p_slip) if known else truth.p_guess), ("loops",)))
            known = known or rng.random() < truth.p_transit
        store.record_attempt(f"s{s}", "a", steps, CATALOG)
    (tmp_path / "skills.toml").write_text('[[skills]]\nid = "loops"\ntitle = "Loops"\nthreshold = 0.9\n')
    r = xgrader("mastery", "fit", "--format", "json", "--write", "--ledger", url, "--handlers", str(tmp_path),
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fitted = json.loads(r.stdout)["fitted"]["loops"]
    assert fitted["students"] == 250 and fitted["opportunities"] == 2500
    for key in ("p_init", "p_transit", "p_slip", "p_guess"):
        assert fitted[key] == pytest.approx(getattr(truth, key), abs=0.08), (key, fitted)
    assert 0.5 < fitted["auc"] <= 1.0
    written = load_catalog(tmp_path).skills["loops"]
    assert written.title == "Loops" and written.params.threshold == 0.9
    assert written.params.p_transit == pytest.approx(fitted["p_transit"])


def test_feedback_names_the_skills_practised_when_the_assignment_asks(skilled_handlers, tmp_path):
    sample = ROOT / "payload_handlers" / "sum_digits" / "samples" / "wrong_offbyone.py"
    off = xgrader("grade", "--handlers", str(skilled_handlers), "--payload", "sum_digits", str(sample), cwd=tmp_path)
    assert off.returncode == 0 and "Skills practised" not in json.loads(off.stdout)["msg"]
    root = tmp_path / "h"
    shutil.copytree(skilled_handlers, root)
    cfg = root / "sum_digits" / "assignment.toml"
    cfg.write_text(cfg.read_text() + "\n[feedback]\nshow_skills = true\n" if "[feedback]" not in cfg.read_text()
                   else cfg.read_text().replace("[feedback]\n", "[feedback]\nshow_skills = true\n", 1))
    on = xgrader("grade", "--handlers", str(root), "--payload", "sum_digits", str(sample), cwd=tmp_path)
    assert on.returncode == 0, on.stderr
    msg = json.loads(on.stdout)["msg"]
    assert ('<p class="xgrader-skills">Skills practised: Taking a number apart digit by digit, Negative numbers</p>'
            in msg)
