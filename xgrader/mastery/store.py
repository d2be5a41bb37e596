"""Per-student mastery, kept in the attempt ledger's database (SQLite, or
PostgreSQL when replicas share it), as the selector protocol defines it.

Tables (component "mastery", versioned migrations like the ledger's):
  mastery_skills         one row per (student, skill): p_known, p_initial,
                         opportunity_count, initial_opportunity_count, history
  mastery_steps          the steps a student has attempted: (student,
                         assignment, test) -> the first attempt's result
  mastery_opportunities  every opportunity in order (what `mastery fit` fits)
  mastery_sets           problem sets a student has started (p_initial and
                         initial_opportunity_count move only then)

One step is one test on the student's *first* attempt at it: a later attempt
at a test already seen changes nothing. Each attempt is one transaction
holding a per-student lock (PostgreSQL advisory lock; SQLite's write lock),
so replicas grading the same student at once never lose an update.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from xgrader.ledger.db import Database, Tx
from xgrader.mastery.bkt import push_history, update
from xgrader.mastery.catalog import SkillCatalog
from xgrader.mastery.view import SkillView

COMPONENT = "mastery"

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE mastery_skills (
            student TEXT NOT NULL,
            skill TEXT NOT NULL,
            p_known {float} NOT NULL,
            p_initial {float} NOT NULL,
            opportunity_count {bigint} NOT NULL,
            initial_opportunity_count {bigint} NOT NULL,
            history TEXT NOT NULL,                 -- the bit vector as a decimal (it outgrows 64 bits)
            updated {float} NOT NULL,
            PRIMARY KEY (student, skill)
        )""",
        "CREATE INDEX mastery_skills_skill ON mastery_skills(skill)",
        """CREATE TABLE mastery_steps (
            student TEXT NOT NULL,
            assignment TEXT NOT NULL,
            test TEXT NOT NULL,
            correct INTEGER NOT NULL,
            at {float} NOT NULL,
            PRIMARY KEY (student, assignment, test)
        )""",
        """CREATE TABLE mastery_opportunities (
            student TEXT NOT NULL,
            skill TEXT NOT NULL,
            n {bigint} NOT NULL,                    -- 1, 2, ... per (student, skill)
            correct INTEGER NOT NULL,
            assignment TEXT NOT NULL,
            test TEXT NOT NULL,
            at {float} NOT NULL,
            PRIMARY KEY (student, skill, n)
        )""",
        """CREATE TABLE mastery_sets (
            student TEXT NOT NULL,
            problem_set TEXT NOT NULL,
            started {float} NOT NULL,
            PRIMARY KEY (student, problem_set)
        )""",
    ],
]


@dataclass(frozen=True)
class Step:
    """One test of a graded attempt and the skills it practises."""

    test: str
    correct: bool
    skills: tuple[str, ...]


@dataclass(frozen=True)
class SkillRecord:
    student: str
    skill: str
    p_known: float
    p_initial: float
    opportunity_count: int
    initial_opportunity_count: int
    history: int
    updated: float


@dataclass(frozen=True)
class Opportunity:
    student: str
    skill: str
    n: int
    correct: bool


class MasteryStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._migrated = False

    @classmethod
    def open(cls, url: str, connect_timeout_s: float = 5.0) -> "MasteryStore":
        return cls(Database(url, connect_timeout_s=connect_timeout_s))

    def migrate(self) -> None:
        if not self._migrated:
            self.db.migrate(COMPONENT, MIGRATIONS)
            self._migrated = True

    # -- writing ------------------------------------------------------------------
    def record_attempt(self, student: str, assignment: str, steps: Sequence[Step], catalog: SkillCatalog,
                       now: float | None = None) -> int:
        """Apply one graded attempt; returns how many opportunities it added."""
        steps = [s for s in steps if s.skills]
        if not steps or not student:
            return 0
        self.migrate()
        now = time.time() if now is None else now
        added = 0
        with self.db.transaction() as tx:
            tx.lock(f"mastery:{student}")
            for step in steps:
                new = tx.one("INSERT INTO mastery_steps(student, assignment, test, correct, at) VALUES (?, ?, ?, ?, ?)"
                             " ON CONFLICT DO NOTHING RETURNING test",
                             (student, assignment, step.test, int(step.correct), now))
                if new is None:
                    continue   # not a first attempt at this step
                for skill in dict.fromkeys(step.skills):
                    self._observe(tx, student, skill, step, assignment, catalog, now)
                    added += 1
        return added

    def _observe(self, tx: Tx, student: str, skill: str, step: Step, assignment: str, catalog: SkillCatalog,
                 now: float) -> None:
        params = catalog.params_for(skill)
        row = tx.one("SELECT p_known, opportunity_count, history FROM mastery_skills WHERE student=? AND skill=?",
                     (student, skill))
        if row is None:
            p_known, count, history = params.p_init, 0, 0
        else:
            p_known, count, history = float(row[0]), int(row[1]), int(row[2])
        p_known = update(p_known, step.correct, params)
        count += 1
        history = push_history(history, step.correct)
        if row is None:
            tx.execute("INSERT INTO mastery_skills(student, skill, p_known, p_initial, opportunity_count,"
                       " initial_opportunity_count, history, updated) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                       (student, skill, p_known, params.p_init, count, str(history), now))
        else:
            tx.execute("UPDATE mastery_skills SET p_known=?, opportunity_count=?, history=?, updated=?"
                       " WHERE student=? AND skill=?", (p_known, count, str(history), now, student, skill))
        tx.execute("INSERT INTO mastery_opportunities(student, skill, n, correct, assignment, test, at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (student, skill, count, int(step.correct), assignment, step.test, now))

    def start_problem_set(self, student: str, problem_set: str, now: float | None = None) -> bool:
        """The student starts `problem_set` (first time seen for them): their
        p_initial and initial_opportunity_count move to the current values.
        Returns whether it was new."""
        if not student or not problem_set:
            return False
        self.migrate()
        now = time.time() if now is None else now
        with self.db.transaction() as tx:
            tx.lock(f"mastery:{student}")
            new = tx.one("INSERT INTO mastery_sets(student, problem_set, started) VALUES (?, ?, ?)"
                         " ON CONFLICT DO NOTHING RETURNING student", (student, problem_set, now))
            if new is None:
                return False
            tx.execute("UPDATE mastery_skills SET p_initial=p_known, initial_opportunity_count=opportunity_count"
                       " WHERE student=?", (student,))
        return True

    def delete_student(self, student: str) -> int:
        """Remove everything kept about one student; returns the skill rows removed."""
        self.migrate()
        with self.db.transaction() as tx:
            n = len(tx.all("SELECT skill FROM mastery_skills WHERE student=?", (student,)))
            for table in ("mastery_skills", "mastery_steps", "mastery_opportunities", "mastery_sets"):
                tx.execute(f"DELETE FROM {table} WHERE student=?", (student,))  # noqa: S608  (fixed names)
        return n

    # -- reading ------------------------------------------------------------------
    def records(self, *, student: str | None = None, skill: str | None = None) -> list[SkillRecord]:
        self.migrate()
        where, params = _where(student=student, skill=skill)
        with self.db.transaction(write=False) as tx:
            rows = tx.all("SELECT student, skill, p_known, p_initial, opportunity_count, initial_opportunity_count,"
                          f" history, updated FROM mastery_skills{where} ORDER BY student, skill", params)
        return [SkillRecord(r[0], r[1], float(r[2]), float(r[3]), int(r[4]), int(r[5]), int(r[6]), float(r[7]))
                for r in rows]

    def opportunities(self, *, skill: str | None = None) -> Iterable[Opportunity]:
        """Every first attempt per (student, skill), in order: what BKT is fitted on."""
        self.migrate()
        where, params = _where(skill=skill)
        with self.db.transaction(write=False) as tx:
            rows = tx.all(f"SELECT student, skill, n, correct FROM mastery_opportunities{where}"
                          " ORDER BY skill, student, n", params)
        return [Opportunity(r[0], r[1], int(r[2]), bool(r[3])) for r in rows]

    def skills_for(self, student: str, catalog: SkillCatalog | None = None) -> dict[str, SkillView]:
        """The selector's evidence: this student's skills as views."""
        catalog = catalog or SkillCatalog()
        return {r.skill: SkillView(r.skill, r.p_known, r.opportunity_count,
                                   catalog.params_for(r.skill).threshold, "ledger")
                for r in self.records(student=student)}


def _where(**filters: str | None) -> tuple[str, tuple]:
    parts = [(f"{k}=?", v) for k, v in filters.items() if v is not None]
    if not parts:
        return "", ()
    return " WHERE " + " AND ".join(p for p, _ in parts), tuple(v for _, v in parts)


class LedgerEvidence:
    """The selector's view of the store (selector.engine.Evidence): a
    student's skills, and the start of a problem set."""

    def __init__(self, store: MasteryStore, catalog: SkillCatalog) -> None:
        self.store = store
        self.catalog = catalog

    def skills_for(self, student: str) -> dict[str, SkillView]:
        return self.store.skills_for(student, self.catalog)

    def start_problem_set(self, student: str, problem_set: str) -> None:
        self.store.start_problem_set(student, problem_set)
