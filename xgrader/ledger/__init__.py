"""The attempt ledger: the project's memory of what it graded.

    Ledger(url)            store: record, history, get, delete_student, prune
    AttemptRecord          one graded submission, as recorded
    LedgerHooks            Hooks.on_attempt -> Ledger.record, never failing grading
    Database               the SQL layer (SQLite / PostgreSQL, versioned migrations)
                           that other stores can share (Database.migrate(component, steps))
"""

from xgrader.ledger.db import Database, DatabaseError
from xgrader.ledger.models import Attempt, AttemptRecord, AttemptSummary, TestOutcome
from xgrader.ledger.recorder import LedgerHooks
from xgrader.ledger.store import Ledger

__all__ = ["Attempt", "AttemptRecord", "AttemptSummary", "Database", "DatabaseError", "Ledger",
           "LedgerHooks", "TestOutcome"]
