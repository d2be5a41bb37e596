"""Selector bench: does mastery-based selection get students to mastery in
fewer problems than a fixed or random order, and how fast is one selection?

1. Simulated students. Each seed draws a course (6 skills with their own
   BKT parameters; 24 problems, 12 practising one skill and 12 two, 3 steps
   per skill) and 40 students who really learn by those parameters: a step
   is right with 1 - p_slip when the skill is known, p_guess when not, and
   the skill is learnt with p_transit after each step. The LMS traces
   mastery with BKT from first attempts, as xgrader's ledger does, and asks
   the selector for the next problem until every skill is at the mastery
   threshold (at most 400 problems). Every request goes through the real
   Selector (JSON in, JSON out). Printed: problems to mastery per policy,
   and fixed/mastery and random/mastery ratios per seed (min, median, max).
2. Latency of one selection with 1,000 candidate problems and 20 skills:
   in process (parse, select, serialise) and over HTTP (waitress, keep-alive).

    python -m bench.selector [--seeds 10] [--students 40] [--requests 500]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from xgrader.mastery.bkt import BktParams, push_history, update
from xgrader.mastery.catalog import Skill, SkillCatalog
from xgrader.selector.config import SelectorConfig
from xgrader.selector.engine import Selector

POLICIES = ("mastery", "fixed", "random")
STEPS_PER_SKILL = 3
MAX_PROBLEMS = 400


def course(rng: random.Random, n_skills: int = 6) -> tuple[SkillCatalog, SelectorConfig, list[str]]:
    skills = {}
    for i in range(n_skills):
        params = BktParams(p_init=rng.uniform(0.05, 0.3), p_transit=rng.uniform(0.05, 0.3),
                           p_slip=rng.uniform(0.05, 0.15), p_guess=rng.uniform(0.1, 0.25))
        skills[f"k{i}"] = Skill(id=f"k{i}", params=params)
    ids = list(skills)
    problems = []
    for i, sid in enumerate(ids):                       # two single-skill problems per skill
        problems += [(f"p{i}a", [sid]), (f"p{i}b", [sid])]
    for j in range(12):                                 # twelve pairs
        a, b = rng.sample(ids, 2)
        problems.append((f"q{j}", [a, b]))
    rng.shuffle(problems)                               # the "course order" a fixed policy follows
    config = SelectorConfig.model_validate({"problems": [{"name": n, "skills": s} for n, s in problems]})
    return SkillCatalog(skills=skills), config, [n for n, _ in problems]


def run_student(selector: Selector, catalog: SkillCatalog, config: SelectorConfig, names: list[str],
                rng: random.Random) -> int:
    skills_of = {p.name: p.skills for p in config.problems}
    known = {sid: rng.random() < s.params.p_init for sid, s in catalog.skills.items()}
    traced = {sid: {"p": s.params.p_init, "n": 0, "h": 0} for sid, s in catalog.skills.items()}
    completed = dict.fromkeys(names, 0)
    model: dict = {}
    for count in range(1, MAX_PROBLEMS + 1):
        req = {
            "skills": [{"skill_id": sid, "p_known": t["p"], "opportunity_count": t["n"], "history": t["h"],
                        "user": {"username": "sim"}} for sid, t in traced.items()],
            "dynamic_model": model,
            "problem_set": {"name": "sim", "max_repeat": 0},
            "problems": [{"name": n, "completed_count": completed[n]} for n in names],
        }
        reply = selector.answer(json.dumps(req))
        name, model = reply["problem_name"], reply["dynamic_model"]
        completed[name] += 1
        for sid in skills_of[name]:
            params = catalog.skills[sid].params
            for _ in range(STEPS_PER_SKILL):
                correct = rng.random() < ((1 - params.p_slip) if known[sid] else params.p_guess)
                t = traced[sid]
                t["p"] = update(t["p"], correct, params)
                t["n"] += 1
                t["h"] = push_history(t["h"], correct)
                if not known[sid] and rng.random() < params.p_transit:
                    known[sid] = True
        if all(t["p"] >= catalog.skills[sid].params.threshold for sid, t in traced.items()):
            return count
    return MAX_PROBLEMS


def simulate(seeds: int, students: int) -> None:
    per_policy: dict[str, list[float]] = {p: [] for p in POLICIES}
    ratios: dict[str, list[float]] = {"fixed": [], "random": []}
    for seed in range(seeds):
        catalog, config, names = course(random.Random(f"course-{seed}"))
        means = {}
        for policy in POLICIES:
            selector = Selector(config, catalog=catalog, policy=policy, seed=seed)
            counts = [run_student(selector, catalog, config, names, random.Random(f"student-{seed}-{s}"))
                      for s in range(students)]
            means[policy] = statistics.mean(counts)
            per_policy[policy].append(means[policy])
        for other in ratios:
            ratios[other].append(means[other] / means["mastery"])
        print(f"seed {seed:2d}: problems to mastery  mastery {means['mastery']:6.1f}  fixed {means['fixed']:6.1f}"
              f"  random {means['random']:6.1f}", flush=True)
    print()
    for policy in POLICIES:
        v = per_policy[policy]
        print(f"{policy:8s} mean problems to mastery over {seeds} seeds x {students} students: "
              f"{statistics.mean(v):.1f} (per seed {min(v):.1f}-{max(v):.1f})")
    for other, v in ratios.items():
        print(f"{other}/mastery ratio: median {statistics.median(v):.2f}, min {min(v):.2f}, max {max(v):.2f}"
              f"  ({sum(r > 1 for r in v)}/{len(v)} seeds where mastery needs fewer problems)")


def big_request(rng: random.Random) -> tuple[bytes, SelectorConfig]:
    skills = [f"s{i}" for i in range(20)]
    problems = [{"name": f"prob{i}", "label": f"prob{i}", "description": "x" * 40, "problem_file": f"p{i}.brd",
                 "selection_features": "", "completed_count": rng.randrange(3)} for i in range(1000)]
    config = SelectorConfig.model_validate(
        {"problems": [{"name": p["name"], "skills": rng.sample(skills, 2)} for p in problems]})
    req = {"skills": [{"skill_id": s, "p_known": rng.random() * 0.9, "opportunity_count": 8, "history": 77,
                       "p_initial": 0.2, "initial_opportunity_count": 0, "user": {"username": "u"}}
                      for s in skills],
           "detectors": [], "dynamic_model": {"k": 1}, "condition": "",
           "problem_set": {"name": "big", "max_count": 5000, "max_repeat": 3}, "problems": problems}
    return json.dumps(req).encode(), config


def latency(n: int) -> None:
    import requests

    from xgrader.selector.web import SelectorApp
    from xgrader.wsgi_server import WSGIServer

    raw, config = big_request(random.Random(1))
    selector = Selector(config)
    for _ in range(20):
        selector.answer(raw)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        selector.answer(raw)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(f"\nin process, 1,000 problems, {len(raw) // 1024} KiB request: p50 {times[len(times) // 2]:.2f} ms, "
          f"p95 {times[int(len(times) * 0.95)]:.2f} ms (target p50 <= 5 ms)")

    server = WSGIServer(SelectorApp(selector), "127.0.0.1", 0, threads=2, name="selector").start()
    url = f"http://127.0.0.1:{server.port}/"
    session = requests.Session()
    for _ in range(20):
        session.post(url, data=raw).raise_for_status()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.post(url, data=raw).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(f"over HTTP (xgrader.wsgi_server, kept-alive): p50 {times[len(times) // 2]:.2f} ms, "
          f"p95 {times[int(len(times) * 0.95)]:.2f} ms")
    server.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--students", type=int, default=40)
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()
    simulate(args.seeds, args.students)
    latency(args.requests)


if __name__ == "__main__":
    main()
