"""The TutorShop selector: protocol, BKT, policies, and both transports
(the external command over stdin/stdout, the remote server over HTTP)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from xgrader.mastery.bkt import BktParams, push_history, update
from xgrader.selector.config import SelectorConfig, load_config
from xgrader.selector.engine import Selector
from xgrader.selector.protocol import MAX_REQUEST_BYTES, SelectorError, parse_request

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = {
    "skills": [
        {"skill_id": 414, "p_initial": 1.0, "p_known": 1.0, "initial_opportunity_count": 3,
         "opportunity_count": 12, "history": 3555,
         "user": {"username": "stu0", "user_role_id": 8, "status": "Active"}},
        {"skill_id": 412, "p_initial": 0.93, "p_known": 0.93, "initial_opportunity_count": 1,
         "opportunity_count": 4, "history": 13,
         "user": {"username": "stu0", "user_role_id": 8, "status": "Active"}},
    ],
    "detectors": [],
    "dynamic_model": {"+=": 0.01, "for": 0.02},
    "problem_set": {"package_id": 264, "name": "For Loop Test3", "label": "For Loop Test3",
                    "selection_algorithm": "remote_selection", "selection_command": "http://selector.example/next",
                    "max_count": 1000, "max_repeat": 1, "initial_sequence": 0, "team_size": 1, "status": "Active"},
    "problems": [
        {"package_id": 264, "name": f"foraddasm_s{i}", "label": f"foraddasm_s{i}",
         "description": "For with Add Assignment", "problem_file": f"foraddasm_itgt_s{i}.brd",
         "interface_type": "html", "tutor_flag": "tutor", "selection_features": "", "completed_count": 0}
        for i in (1, 2, 3)
    ],
    "condition": "",
}

# s1 practises the mastered skill 414, s2 the nearly mastered 412, s3 both.
CONFIG = SelectorConfig.model_validate({
    "problems": [{"name": "foraddasm_s1", "skills": ["add"]},
                 {"name": "foraddasm_s2", "skills": ["for"]},
                 {"name": "foraddasm_s3", "skills": ["add", "for"]}],
    "lms_skills": {"414": "add", "412": "for"},
})


def request(**changes):
    req = copy.deepcopy(SAMPLE)
    req.update(changes)
    return req


def answer(selector: Selector, req) -> dict:
    return selector.answer(json.dumps(req))


# --- protocol ----------------------------------------------------------------

def test_sample_request_parses_with_unknown_fields_kept():
    req = parse_request(json.dumps(request(extra_top_level={"x": 1})))
    assert req.problems[0].name == "foraddasm_s1"
    assert req.skills[0].history == 3555 and req.skills[1].opportunity_count == 4
    assert req.model_extra == {"extra_top_level": {"x": 1}}
    assert req.problems[0].model_extra["problem_file"] == "foraddasm_itgt_s1.brd"
    assert req.user()["username"] == "stu0"


@pytest.mark.parametrize(("body", "needle"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps(request(problems=[])).encode(), "problems: List should have at least 1 item"),
    (json.dumps({k: v for k, v in SAMPLE.items() if k != "problem_set"}).encode(), "problem_set: Field required"),
    (json.dumps(request(skills=[{**SAMPLE["skills"][1], "history": 64}])).encode(),
     "history 64 has 7 bits but opportunity_count is 4"),
    (json.dumps(request(problems=[{"name": "a"}, {"name": "a"}])).encode(), "unique"),
    (json.dumps(request(skills=[{**SAMPLE["skills"][0], "p_known": 1.5}])).encode(), "skills.0.p_known"),
])
def test_bad_requests_are_clear_errors(body, needle):
    with pytest.raises(SelectorError) as err:
        parse_request(body)
    assert err.value.code == "bad_request"
    assert needle in err.value.message


def test_huge_request_refused_before_parsing():
    with pytest.raises(SelectorError) as err:
        parse_request(b" " * (MAX_REQUEST_BYTES + 1))
    assert err.value.code == "too_large"


# --- BKT ---------------------------------------------------------------------

def test_bkt_update_matches_the_standard_formulas():
    p = BktParams(p_init=0.3, p_transit=0.1, p_slip=0.1, p_guess=0.2)
    # correct: 0.3*0.9 / (0.3*0.9 + 0.7*0.2) = 0.658536..., then + (1-x)*0.1
    post = 0.27 / (0.27 + 0.14)
    assert update(0.3, True, p) == pytest.approx(post + (1 - post) * 0.1)
    post = 0.03 / (0.03 + 0.7 * 0.8)
    assert update(0.3, False, p) == pytest.approx(post + (1 - post) * 0.1)
    # evidence moves mastery the right way, and repeated success converges up
    x = 0.3
    for _ in range(30):
        x = update(x, True, p)
    assert x > 0.99
    assert push_history(13, True) == 27 and push_history(13, False) == 26


@pytest.mark.parametrize("bad", [{"p_slip": 0.5}, {"p_guess": 0.6}, {"p_init": 1.2}, {"threshold": 0}])
def test_bkt_params_refuse_a_model_where_correct_means_unknown(bad):
    with pytest.raises(ValueError):
        BktParams(**bad)


# --- policies ------------------------------------------------------------------

def test_mastery_picks_the_problem_of_the_least_mastered_open_skill():
    sel = Selector(CONFIG)
    reply = answer(sel, request())
    # 414 ("add") is mastered (1.0), 412 ("for") is at 0.93: s2 and s3 both practise it; tie -> request order
    assert reply["problem_name"] == "foraddasm_s2"
    assert reply["dynamic_model"] == SAMPLE["dynamic_model"]   # untouched: mastery keeps no state


def test_mastery_respects_max_repeat_and_completion():
    sel = Selector(CONFIG)
    probs = copy.deepcopy(SAMPLE["problems"])
    probs[1]["completed_count"] = 1   # s2 done once, max_repeat 1
    assert answer(sel, request(problems=probs))["problem_name"] == "foraddasm_s3"
    probs[2]["completed_count"] = 1
    with pytest.raises(SelectorError) as err:   # only s1 is left, and its skill is mastered
        answer(sel, request(problems=probs))
    assert err.value.code == "problem_set_complete"
    repeat = Selector(CONFIG.model_copy(update={"when_complete": "repeat"}))
    assert answer(repeat, request(problems=probs))["problem_name"] == "foraddasm_s1"
    ps = {**SAMPLE["problem_set"], "max_count": 2}
    with pytest.raises(SelectorError) as err:
        answer(repeat, request(problems=probs, problem_set=ps))
    assert "max_count" in err.value.message


def test_mastery_offers_unknown_problems_once_after_known_ones():
    cfg = SelectorConfig.model_validate({"problems": [{"name": "foraddasm_s2", "skills": ["for"]}],
                                         "lms_skills": {"412": "for"}})
    sel = Selector(cfg)
    assert answer(sel, request())["problem_name"] == "foraddasm_s2"
    skills = [SAMPLE["skills"][0], {**SAMPLE["skills"][1], "p_known": 0.97}]
    assert answer(sel, request(skills=skills))["problem_name"] == "foraddasm_s1"   # no skill data, never done
    probs = copy.deepcopy(SAMPLE["problems"])
    probs[0]["completed_count"] = 1
    ps = {**SAMPLE["problem_set"], "max_repeat": 5}
    assert answer(sel, request(skills=skills, problems=probs, problem_set=ps))["problem_name"] == "foraddasm_s3"


def test_mastery_threshold_comes_from_the_skill_catalog(tmp_path):
    from xgrader.mastery.catalog import load_catalog
    (tmp_path / "skills.toml").write_text('[[skills]]\nid = "for"\nthreshold = 0.9\n')
    sel = Selector(CONFIG, catalog=load_catalog(tmp_path))
    with pytest.raises(SelectorError) as err:     # 0.93 >= 0.9: "for" is mastered too
        answer(sel, request())
    assert err.value.code == "problem_set_complete"


def test_fixed_policy_goes_in_request_order():
    sel = Selector(CONFIG, policy="fixed")
    probs = copy.deepcopy(SAMPLE["problems"])
    seen = []
    ps = {**SAMPLE["problem_set"], "max_repeat": 0}
    for _ in range(4):
        name = answer(sel, request(problems=probs, problem_set=ps))["problem_name"]
        seen.append(name)
        next(p for p in probs if p["name"] == name)["completed_count"] += 1
    assert seen == ["foraddasm_s1", "foraddasm_s2", "foraddasm_s3", "foraddasm_s1"]


def test_random_policy_is_seeded_and_keeps_its_state_namespaced():
    sel = Selector(CONFIG, policy="random", seed=7)
    model = dict(SAMPLE["dynamic_model"])
    picks = []
    for _ in range(6):
        reply = answer(sel, request(dynamic_model=model, problem_set={**SAMPLE["problem_set"], "max_repeat": 0}))
        picks.append(reply["problem_name"])
        model = reply["dynamic_model"]
    assert model["+="] == 0.01 and model["for"] == 0.02          # the LMS's keys round-trip
    assert model["xgrader:random"] == {"seed": 7, "n": 6}
    again, model2 = [], dict(SAMPLE["dynamic_model"])
    for _ in range(6):
        reply = answer(Selector(CONFIG, policy="random"),  # no --seed: the stored seed wins after the first
                       request(dynamic_model=model2 if model2.get("xgrader:random") else
                               {**model2, "xgrader:random": {"seed": 7, "n": 0}},
                               problem_set={**SAMPLE["problem_set"], "max_repeat": 0}))
        again.append(reply["problem_name"])
        model2 = reply["dynamic_model"]
    assert again == picks
    assert len(set(picks)) > 1


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(SelectorError) as err:
        Selector(CONFIG, policy="nope")
    assert "unknown policy 'nope'" in err.value.message and "mastery" in err.value.message


def test_config_file_maps_features_and_assignments(tmp_path):
    (tmp_path / "selector.toml").write_text(textwrap.dedent("""
        [[problems]]
        features = "loops"
        skills = ["for"]
        [[problems]]
        name = "foraddasm_s3"
        assignment = "sum_digits"
        [lms_skills]
        "412" = "for"
        "414" = "add"
    """))
    cfg = load_config(tmp_path / "selector.toml")
    probs = copy.deepcopy(SAMPLE["problems"])
    probs[0]["selection_features"] = "arith, loops"
    sel = Selector(cfg, assignment_skills=lambda name: ("digits",) if name == "sum_digits" else ())
    # s1 practises "for" (0.93); s3 practises "digits" (never seen: 0.0) -> s3
    assert answer(sel, request(problems=probs))["problem_name"] == "foraddasm_s3"


# --- transports ---------------------------------------------------------------

def _cli(args: list[str], stdin: bytes, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *(env_extra or {}).get("PYTHONPATH", "").split(
        os.pathsep)]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, "-m", "xgrader", *args], input=stdin, capture_output=True,
                          env=env, timeout=60)


@pytest.fixture(scope="module")
def selector_config(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("selector")
    (d / "selector.toml").write_text(textwrap.dedent("""
        [[problems]]
        name = "foraddasm_s1"
        skills = ["add"]
        [[problems]]
        name = "foraddasm_s2"
        skills = ["for"]
        [[problems]]
        name = "foraddasm_s3"
        skills = ["add", "for"]
        [lms_skills]
        "414" = "add"
        "412" = "for"
    """))
    return d / "selector.toml"


BAD_BODIES = {
    "not_json": b"{nope",
    "empty_problems": json.dumps(request(problems=[])).encode(),
    "missing_problem_set": json.dumps({k: v for k, v in SAMPLE.items() if k != "problem_set"}).encode(),
    "history_disagrees": json.dumps(request(skills=[{**SAMPLE["skills"][1], "history": 255}])).encode(),
}


def test_external_selector_answers_the_sample(selector_config):
    r = _cli(["selector", "--config", str(selector_config), "--handlers", str(tmp_handlers := selector_config.parent)],
             json.dumps(request(unknown_field=[1, 2])).encode())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"problem_name": "foraddasm_s2", "dynamic_model": SAMPLE["dynamic_model"]}
    assert tmp_handlers.is_dir()


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_external_selector_bad_input_is_json_and_nonzero(selector_config, case):
    r = _cli(["selector", "--config", str(selector_config), "--handlers", str(selector_config.parent)],
             BAD_BODIES[case])
    assert r.returncode == 2
    assert json.loads(r.stdout)["error"]["code"] == "bad_request"
    assert b"Traceback" not in r.stderr and b"Traceback" not in r.stdout


def test_external_selector_huge_request_and_completion(selector_config):
    r = _cli(["selector", "--config", str(selector_config), "--handlers", str(selector_config.parent)],
             b"[" + b" " * MAX_REQUEST_BYTES + b"]")
    assert r.returncode == 2 and json.loads(r.stdout)["error"]["code"] == "too_large"
    done = [{**p, "completed_count": 1} for p in SAMPLE["problems"]]
    r = _cli(["selector", "--config", str(selector_config), "--handlers", str(selector_config.parent)],
             json.dumps(request(problems=done)).encode())
    assert r.returncode == 3 and json.loads(r.stdout)["error"]["code"] == "problem_set_complete"


def test_custom_policy_from_an_entry_point(tmp_path, selector_config):
    pkg = tmp_path / "site"
    (pkg / "lastpolicy.py").parent.mkdir(parents=True)
    (pkg / "lastpolicy.py").write_text(textwrap.dedent("""
        from xgrader.selector.policies import Policy, Selection

        class Last(Policy):
            name = "last"
            def select(self, ctx):
                n = ctx.state.get("calls", 0)
                return Selection(ctx.eligible[-1].name, {"calls": n + 1})
    """))
    dist = pkg / "lastpolicy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lastpolicy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[xgrader.selectors]\nlast = lastpolicy:Last\n")
    r = _cli(["selector", "--policy", "last", "--config", str(selector_config), "--handlers",
              str(selector_config.parent)], json.dumps(request()).encode(), {"PYTHONPATH": str(pkg)})
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["problem_name"] == "foraddasm_s3"
    assert out["dynamic_model"] == {**SAMPLE["dynamic_model"], "xgrader:last": {"calls": 1}}


@pytest.fixture(scope="module")
def remote(selector_config):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XGRADER_SELECTOR_TOKEN": "s3cret"}
    proc = subprocess.Popen([sys.executable, "-m", "xgrader", "serve-selector", "--port", "0", "--config",
                             str(selector_config), "--handlers", str(selector_config.parent)],
                            stderr=subprocess.PIPE, env=env)
    line = proc.stderr.readline().decode()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert m, line
    yield f"http://127.0.0.1:{m.group(1)}"
    proc.terminate()
    assert proc.wait(timeout=10) == 0


AUTH = {"Authorization": "Bearer s3cret"}


def test_remote_selector_answers_the_sample(remote):
    r = requests.post(remote + "/", data=json.dumps(SAMPLE), headers=AUTH, timeout=10)
    assert r.status_code == 200
    assert r.json() == {"problem_name": "foraddasm_s2", "dynamic_model": SAMPLE["dynamic_model"]}
    assert requests.get(remote + "/healthz", timeout=10).text == "ok\n"
    metrics = requests.get(remote + "/metrics", timeout=10).text
    assert 'xgrader_selector_requests_total{outcome="selected"}' in metrics


def test_remote_selector_needs_the_token(remote):
    r = requests.post(remote + "/", data=json.dumps(SAMPLE), timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = requests.post(remote + "/", data=json.dumps(SAMPLE), headers={"Authorization": "Bearer nope"}, timeout=10)
    assert r.status_code == 401


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_remote_selector_bad_input_is_400_json(remote, case):
    r = requests.post(remote + "/select", data=BAD_BODIES[case], headers=AUTH, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_request"


def test_remote_selector_refuses_huge_requests_and_reports_completion(remote):
    # Refused by the server from Content-Length, before the body is read.
    r = requests.post(remote + "/", data=b"[" + b" " * MAX_REQUEST_BYTES + b"]", headers=AUTH, timeout=30)
    assert r.status_code == 413
    done = [{**p, "completed_count": 1} for p in SAMPLE["problems"]]
    r = requests.post(remote + "/", data=json.dumps(request(problems=done)), headers=AUTH, timeout=10)
    assert r.status_code == 409 and r.json()["error"]["code"] == "problem_set_complete"
    r = requests.get(remote + "/", headers=AUTH, timeout=10)
    assert r.status_code == 405
