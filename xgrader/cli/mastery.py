"""`xgrader mastery report|fit`: students' mastery of each skill, and BKT
parameters estimated from the recorded first attempts (docs/selector.md)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from xgrader.cli.history import add_ledger_option, open_ledger, when_text

# pyBKT's names for the four parameters -> skills.toml's
PYBKT_PARAMS = {"prior": "p_init", "learns": "p_transit", "slips": "p_slip", "guesses": "p_guess"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mastery", help="students' mastery of each skill; fit BKT parameters from the ledger",
                       description="Mastery by Bayesian Knowledge Tracing, kept in the attempt ledger's store "
                       "from every graded attempt's tests (docs/selector.md).")
    msub = p.add_subparsers(dest="mastery_command", metavar="ACTION", required=True)
    rep = msub.add_parser("report", help="mastery per student and skill: table, CSV or JSON")
    rep.add_argument("--student", help="one student (anonymised id)")
    rep.add_argument("--skill", help="one skill id")
    rep.add_argument("--format", choices=("table", "csv", "json"), default="table")
    rep.add_argument("--handlers", type=Path, help="handlers root (its skills.toml gives the mastery thresholds)")
    add_ledger_option(rep)
    rep.set_defaults(func=report)

    fit = msub.add_parser("fit", help="estimate each skill's BKT parameters with pyBKT (extra 'mastery')",
                          description="Fit p_init, p_transit, p_slip and p_guess per skill from the recorded "
                          "first attempts (pyBKT, expectation maximisation), print them with the fit, and with "
                          "--write update skills.toml at the handlers root.")
    fit.add_argument("--skill", help="only this skill")
    fit.add_argument("--handlers", type=Path, help="handlers root holding skills.toml (default: settings)")
    fit.add_argument("--write", action="store_true", help="write the fitted parameters into skills.toml")
    fit.add_argument("--min-students", type=int, default=10,
                     help="skip skills with fewer students than this (default 10)")
    fit.add_argument("--seed", type=int, default=42, help="pyBKT's random restarts seed (default 42)")
    fit.add_argument("--format", choices=("table", "json"), default="table")
    add_ledger_option(fit)
    fit.set_defaults(func=fit_cmd)


def _handlers(args: argparse.Namespace) -> Path:
    if args.handlers is not None:
        return args.handlers
    from xgrader.config import Settings

    return Settings.load(getattr(args, "config", None)).handlers


def report(args: argparse.Namespace) -> int:
    from xgrader.mastery.catalog import load_catalog
    from xgrader.mastery.store import MasteryStore

    catalog = load_catalog(_handlers(args))
    ledger = open_ledger(args)
    try:
        rows = MasteryStore(ledger.db).records(student=args.student, skill=args.skill)
    finally:
        ledger.close()
    out = [{"student": r.student, "skill": r.skill, "p_known": round(r.p_known, 4),
            "mastered": r.p_known >= catalog.params_for(r.skill).threshold,
            "p_initial": round(r.p_initial, 4), "opportunity_count": r.opportunity_count,
            "initial_opportunity_count": r.initial_opportunity_count, "history": r.history,
            "updated": when_text(r.updated)} for r in rows]
    if args.format == "json":
        for row in out:
            print(json.dumps(row))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(out[0]) if out else ["student", "skill"])
        writer.writeheader()
        writer.writerows(out)
    elif not out:
        print("no mastery recorded (no graded test names a skill yet)")
    else:
        print(f"{'STUDENT':20} {'SKILL':20} {'P_KNOWN':>7} {'MASTERED':8} {'OPPS':>5}  {'LATEST FIRST ATTEMPTS':22} UPDATED")
        for r, row in zip(rows, out):
            bits = format(r.history, "b").zfill(r.opportunity_count)[-20:] if r.opportunity_count else ""
            print(f"{r.student[:20]:20} {r.skill[:20]:20} {r.p_known:7.3f} {'yes' if row['mastered'] else 'no':8} "
                  f"{r.opportunity_count:5d}  {bits:22} {row['updated']}")
    return 0


def fit_cmd(args: argparse.Namespace) -> int:
    from xgrader.extras import require
    from xgrader.mastery.catalog import SKILLS_FILE, load_catalog
    from xgrader.mastery.store import MasteryStore

    require("pyBKT", "mastery")
    handlers = _handlers(args)
    catalog = load_catalog(handlers)
    ledger = open_ledger(args)
    try:
        opps = list(MasteryStore(ledger.db).opportunities(skill=args.skill))
    finally:
        ledger.close()
    by_skill: dict[str, list] = {}
    for o in opps:
        by_skill.setdefault(o.skill, []).append(o)
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for skill, rows in sorted(by_skill.items()):
        students = len({o.student for o in rows})
        if students < args.min_students:
            skipped[skill] = f"{students} students (fewer than --min-students {args.min_students})"
            continue
        results[skill] = fit_skill(skill, rows, args.seed) | {"students": students, "opportunities": len(rows)}
    if args.format == "json":
        print(json.dumps({"fitted": results, "skipped": skipped}, indent=2))
    else:
        if not results and not skipped:
            print("no first attempts recorded (no graded test names a skill yet)")
        if results:
            print(f"{'SKILL':20} {'P_INIT':>7} {'P_TRANSIT':>9} {'P_SLIP':>7} {'P_GUESS':>7} {'LOGLIK':>10} "
                  f"{'AUC':>6} {'RMSE':>6} {'STUDENTS':>8} {'OPPS':>6}")
            for skill, r in results.items():
                print(f"{skill[:20]:20} {r['p_init']:7.3f} {r['p_transit']:9.3f} {r['p_slip']:7.3f} "
                      f"{r['p_guess']:7.3f} {r['loglik']:10.1f} {r['auc']:6.3f} {r['rmse']:6.3f} "
                      f"{r['students']:8d} {r['opportunities']:6d}")
        for skill, why in skipped.items():
            print(f"skipped {skill}: {why}")
    if args.write and results:
        path = handlers / SKILLS_FILE
        path.write_text(render_catalog(catalog, {s: {k: r[k] for k in PYBKT_PARAMS.values()}
                                                 for s, r in results.items()}), encoding="utf-8")
        print(f"wrote {len(results)} skills' parameters to {path}", file=sys.stderr)
    return 0


def fit_skill(skill: str, rows: list, seed: int) -> dict[str, float]:
    """pyBKT's EM fit of one skill; its parameters clamped to what skills.toml
    accepts (slip and guess below 0.5), with the log-likelihood, AUC and RMSE."""
    import pandas as pd
    from pyBKT.models import Model

    frame = pd.DataFrame({"user_id": [o.student for o in rows], "skill_name": [skill] * len(rows),
                          "correct": [int(o.correct) for o in rows], "order_id": range(len(rows))})
    model = Model(seed=seed, num_fits=5)
    model.fit(data=frame)
    params = model.params().reset_index()
    values = {PYBKT_PARAMS[p]: float(v) for p, v in zip(params["param"], params["value"]) if p in PYBKT_PARAMS}
    values["p_slip"] = min(values["p_slip"], 0.499)
    values["p_guess"] = min(values["p_guess"], 0.499)
    auc, rmse = model.evaluate(data=frame, metric=["auc", "rmse"])
    loglik = float(model.fit_model[skill]["log_likelihoods"][-1]) if "log_likelihoods" in model.fit_model[skill] \
        else float("nan")
    return {**{k: round(v, 4) for k, v in values.items()}, "loglik": loglik, "auc": float(auc), "rmse": float(rmse)}


def render_catalog(catalog: Any, fitted: dict[str, dict[str, float]]) -> str:
    """skills.toml with the fitted parameters in place (titles and thresholds kept)."""
    lines = ["# Skills and their BKT parameters (docs/selector.md).",
             "# Parameters fitted by `xgrader mastery fit --write` from recorded first attempts.", ""]
    d = catalog.defaults
    lines += ["[defaults]", f"p_init = {d.p_init}", f"p_transit = {d.p_transit}", f"p_slip = {d.p_slip}",
              f"p_guess = {d.p_guess}", f"threshold = {d.threshold}", ""]
    for sid in sorted({*catalog.skills, *fitted}):
        skill = catalog.skills.get(sid)
        params = (skill.params if skill is not None else d).model_dump()
        params.update(fitted.get(sid, {}))
        lines += ["[[skills]]", f"id = {json.dumps(sid)}"]
        if skill is not None and skill.title:
            lines.append(f"title = {json.dumps(skill.title)}")
        lines += [f"{k} = {params[k]}" for k in ("p_init", "p_transit", "p_slip", "p_guess", "threshold")]
        lines.append("")
    return "\n".join(lines)
