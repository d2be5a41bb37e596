"""Handler kinds: `pytest` (instructor pytest files through the proxy), `io`
(expression and program cases), `image` (images compared with a tolerance)
and `mutation` (the student's tests graded by mutants). :func:`run` picks by
the assignment's kind.

Both kinds and the submission materializer are imported here, eagerly: the
daemon imports the grading path once before it forks a child per submission,
and a module a child imports itself costs every submission again (about
10-30 ms of CPU per child, see docs/performance.md)."""

from __future__ import annotations

from xgrader import submissions  # noqa: F401  (used by grading.materialize; imported for the fork)
from xgrader.assignment import Assignment
from xgrader.handlers.context import GradeContext
from xgrader.handlers.image_kind import grade_image
from xgrader.handlers.io_kind import grade_io
from xgrader.handlers.mutation_kind import grade_mutation
from xgrader.handlers.pytest_kind import grade_pytest
from xgrader.handlers.student import ensure_runner_bytecode
from xgrader.report import GradeReport


def run(assignment: Assignment, files: dict[str, bytes], ctx: GradeContext) -> GradeReport:
    ensure_runner_bytecode(ctx.settings.runner_dir, ctx.settings.sandbox_python)
    if assignment.config.kind == "io":
        return grade_io(assignment, files, ctx)
    if assignment.config.kind == "image":
        return grade_image(assignment, files, ctx)
    if assignment.config.kind == "mutation":
        return grade_mutation(assignment, files, ctx)
    return grade_pytest(assignment, files, ctx)
