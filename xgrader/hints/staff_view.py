"""What a delivered hint keeps for the staff who may answer an escalation:
the student's files as graded, the feedback they saw, and every test with,
for hidden ones, the test itself (the io case, or the pytest function's
source) and what happened in it (input, expected and actual values, output,
error: `xgrader grade --staff`'s view). Recorded when the hint is delivered, so staff see the submission as
it was graded even after the assignment changes."""

from __future__ import annotations

import ast

from xgrader import coverage, feedback
from xgrader.assignment import Assignment
from xgrader.hints.models import AuditRecord, HintType
from xgrader.hints.records import MAX_FEEDBACK_CHARS, MAX_FILE_CHARS, MAX_FILES, Delivery, StaffTest
from xgrader.report import GradeReport


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters]"


def student_files(files: dict[str, bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in sorted(files)[:MAX_FILES]:
        data = files[name]
        try:
            out[name] = _cap(data.decode("utf-8"), MAX_FILE_CHARS)
        except UnicodeDecodeError:
            out[name] = f"[binary file, {len(data)} bytes]"
    if len(files) > MAX_FILES:
        out["..."] = f"[{len(files) - MAX_FILES} more files not kept]"
    return out


def _pytest_sources(assignment: Assignment) -> dict[str, str]:
    """Test function name -> its source, over the hidden test files."""
    out: dict[str, str] = {}
    for name, data in assignment.tests.items():
        if not name.endswith(".py"):
            continue
        source = data.decode("utf-8", "replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                segment = ast.get_source_segment(source, node) or ""
                out.setdefault(node.name, f"# {name}\n{segment}")
    return out


def _case_text(assignment: Assignment, index: int) -> str:
    case = assignment.cases[index]
    lines = []
    if case.expr is not None:
        lines.append(f"expression: {case.expr}")
    if case.stdin is not None:
        lines.append(f"stdin:\n{case.stdin}")
    lines.append(f"expected: {case.expected}" if case.expected is not None
                 else "expected: what the reference solution gives")
    return "\n".join(lines)


def staff_tests(assignment: Assignment, report: GradeReport) -> list[StaffTest]:
    cases = {assignment.case_name(i): i for i in range(len(assignment.cases))}
    sources = _pytest_sources(assignment) if not assignment.cases else {}
    out = []
    for t in report.tests:
        definition = None
        if not t.visible:
            if t.name in cases:
                definition = _case_text(assignment, cases[t.name])
            else:
                definition = sources.get(t.name.split(" #")[0])
        # Hidden tests: what really happened too (the values the student is not shown).
        happened = None if t.visible else coverage.staff_detail(t)
        out.append(StaffTest(name=t.name, status=t.status.value, visible=t.visible, exception_type=t.exception_type,
                             input=t.input, expected=t.expected, actual=t.actual, message=t.message,
                             definition=_cap(definition, 4000) if definition else None,
                             happened={k: _cap(str(v), 2000) for k, v in happened.items()} if happened else None))
    return out


def delivery_for(record: AuditRecord, assignment: Assignment, report: GradeReport,
                 files: dict[str, bytes], hint_type: HintType, hint: str) -> Delivery:
    seen = report.model_copy(update={"hint": None, "hint_type": None})
    return Delivery(
        audit_id=record.id, at=record.at, student=record.student, assignment=assignment.name,
        title=assignment.config.title or assignment.name, submission_id=record.submission_id,
        hint_type=hint_type, model=record.model, hint=hint, score=report.score, max_score=report.max_score,
        files=student_files(files), feedback=_cap(feedback.render_text(seen), MAX_FEEDBACK_CHARS),
        tests=staff_tests(assignment, report),
    )
