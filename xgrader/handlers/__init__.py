"""Handler kinds: `pytest` (instructor pytest files through the proxy) and
`io` (expression and program cases). :func:`run` picks by the assignment's kind."""

from __future__ import annotations

from xgrader.assignment import Assignment
from xgrader.handlers.context import GradeContext
from xgrader.report import GradeReport


def run(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext) -> GradeReport:
    if assignment.config.kind == "io":
        from xgrader.handlers.io_kind import grade_io
        return grade_io(assignment, files, ctx)
    from xgrader.handlers.pytest_kind import grade_pytest
    return grade_pytest(assignment, files, ctx)
