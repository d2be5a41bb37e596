"""Mutants of Python source: small, deliberate bugs, one per mutant.

    mutants = generate(source, "submission.py")          # every operator
    mutants = generate(source, "submission.py", ["compare", "range"])
    for m in mutants: m.id, m.operator, m.line, m.description, m.source, m.diff()

Operators (OPERATORS): comparison, arithmetic and boolean operator swaps,
constants +-1, range bounds off by one, negated conditions, deleted
statements, `return None`, swapped arguments.

How: the standard library's `ast` finds each site; the mutated node is
spliced into the original text at the node's exact position (ast's line and
column offsets), so the rest of the file, comments and layout included, is
untouched and the diff shows one change. Every mutant is parsed back and
compared with the intended tree: a splice that would change the meaning in
another way (operator precedence) is parenthesised, or dropped.

Why not a mutation library: mutmut 3 and cosmic-ray implement about half of
these operators (neither deletes statements, swaps arguments or has
`return None`), and both drive their own runner over a whole project
(mutmut's operators are internals of its trampoline runner; cosmic-ray
brings a session database and a dozen dependencies). Here the runner is
xgrader's sandbox, and one file of source is the unit.
"""

from __future__ import annotations

import ast
import copy
import difflib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

Site = tuple[ast.AST, ast.AST, str]   # (node to replace, its mutated copy, description)


@dataclass(frozen=True)
class Mutant:
    id: str             # "m001" ... in file order, stable for the same source and operators
    file: str           # path of the mutated file, relative to the solution
    operator: str
    line: int
    col: int
    description: str    # e.g. "`<=` -> `<`"
    original: str       # the file before
    source: str         # the file after

    def diff(self, context: int = 1) -> str:
        return "".join(difflib.unified_diff(
            self.original.splitlines(keepends=True), self.source.splitlines(keepends=True),
            fromfile=f"a/{self.file}", tofile=f"b/{self.file}", n=context))

    def files(self, solution: dict[str, bytes]) -> dict[str, bytes]:
        """The solution's files with this mutant in place."""
        return {**solution, self.file: self.source.encode()}

    def header(self) -> str:
        return f"{self.id} {self.file}:{self.line} {self.operator}: {self.description}"


# -- operators -----------------------------------------------------------------

COMPARE_SWAPS: dict[type, list[type]] = {
    ast.Lt: [ast.LtE, ast.Gt], ast.LtE: [ast.Lt, ast.GtE], ast.Gt: [ast.GtE, ast.Lt],
    ast.GtE: [ast.Gt, ast.LtE], ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq], ast.Is: [ast.IsNot],
    ast.IsNot: [ast.Is], ast.In: [ast.NotIn], ast.NotIn: [ast.In],
}
ARITH_SWAPS: dict[type, list[type]] = {
    ast.Add: [ast.Sub], ast.Sub: [ast.Add], ast.Mult: [ast.Div, ast.Add], ast.Div: [ast.Mult, ast.FloorDiv],
    ast.FloorDiv: [ast.Div, ast.Mult], ast.Mod: [ast.FloorDiv], ast.Pow: [ast.Mult],
}
SYMBOL = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
    ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
    ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**", ast.And: "and", ast.Or: "or",
}
# Statements a deletion may remove (definitions, imports and scope declarations
# make mutants that fail to load or change nothing a test can see).
DELETABLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Raise, ast.Assert, ast.Return,
             ast.If, ast.For, ast.While, ast.With, ast.Try, ast.Delete)


def _compare(node: ast.AST) -> Iterator[Site]:
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new in COMPARE_SWAPS.get(type(op), []):
                m = copy.deepcopy(node)
                m.ops[i] = new()
                yield node, m, f"`{SYMBOL[type(op)]}` -> `{SYMBOL[new]}`"


def _arith(node: ast.AST) -> Iterator[Site]:
    if isinstance(node, (ast.BinOp, ast.AugAssign)):
        for new in ARITH_SWAPS.get(type(node.op), []):
            m = copy.deepcopy(node)
            m.op = new()
            suffix = "=" if isinstance(node, ast.AugAssign) else ""
            yield node, m, f"`{SYMBOL[type(node.op)]}{suffix}` -> `{SYMBOL[new]}{suffix}`"


def _bool(node: ast.AST) -> Iterator[Site]:
    if isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        m = copy.deepcopy(node)
        m.op = new()
        yield node, m, f"`{SYMBOL[type(node.op)]}` -> `{SYMBOL[new]}`"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield node, copy.deepcopy(node.operand), "`not x` -> `x`"
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield node, ast.Constant(not node.value), f"`{node.value}` -> `{not node.value}`"


def _const(node: ast.AST) -> Iterator[Site]:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        for delta in (1, -1):
            new = node.value + delta
            yield node, ast.Constant(new), f"`{node.value!r}` -> `{new!r}`"


def _range(node: ast.AST) -> Iterator[Site]:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and 1 <= len(node.args) <= 3 and not node.keywords):
        return
    bounds = [("stop", 0 if len(node.args) == 1 else 1)]
    if len(node.args) >= 2:
        bounds.append(("start", 0))
    for which, index in bounds:
        for op, sign in ((ast.Add, "+"), (ast.Sub, "-")):
            m = copy.deepcopy(node)
            m.args[index] = ast.BinOp(m.args[index], op(), ast.Constant(1))
            yield node, m, f"range {which} {sign} 1"


def _negate(node: ast.AST) -> Iterator[Site]:
    if isinstance(node, (ast.If, ast.While, ast.IfExp)):
        yield node.test, ast.UnaryOp(ast.Not(), copy.deepcopy(node.test)), "condition negated"


def _delete(node: ast.AST) -> Iterator[Site]:
    for body in _bodies(node):
        for i, stmt in enumerate(body):
            if not isinstance(stmt, DELETABLE) or _is_docstring(body, i):
                continue
            if isinstance(stmt, ast.Return) and i == len(body) - 1:
                continue   # falling off the end: the same as the return_none mutant
            yield stmt, ast.Pass(), f"statement deleted (`{_first_line(stmt)}`)"


def _return_none(node: ast.AST) -> Iterator[Site]:
    if isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        yield node, ast.Return(ast.Constant(None)), f"`{_first_line(node)}` -> `return None`"


def _swap_args(node: ast.AST) -> Iterator[Site]:
    if isinstance(node, ast.Call) and len(node.args) >= 2 and not any(
            isinstance(a, ast.Starred) for a in node.args):
        for i in range(len(node.args) - 1):
            if ast.dump(node.args[i]) == ast.dump(node.args[i + 1]):
                continue
            m = copy.deepcopy(node)
            m.args[i], m.args[i + 1] = m.args[i + 1], m.args[i]
            yield node, m, f"arguments {i + 1} and {i + 2} swapped"


OPERATORS: dict[str, Callable[[ast.AST], Iterator[Site]]] = {
    "compare": _compare, "arith": _arith, "bool": _bool, "const": _const, "range": _range,
    "negate": _negate, "delete": _delete, "return_none": _return_none, "swap_args": _swap_args,
}


def _bodies(node: ast.AST) -> Iterator[list[ast.stmt]]:
    for name in ("body", "orelse", "finalbody"):
        body = getattr(node, name, None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            yield body
    for handler in getattr(node, "handlers", []) or []:
        yield handler.body


def _is_docstring(body: list[ast.stmt], i: int) -> bool:
    stmt = body[i]
    return (i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


def _first_line(node: ast.AST) -> str:
    text = ast.unparse(node).splitlines()[0]
    return text if len(text) <= 60 else text[:57] + "..."


def _docstring_nodes(tree: ast.AST) -> set[int]:
    """Constants that are docstrings: never mutated (no test can see them)."""
    out = set()
    for node in ast.walk(tree):
        for body in _bodies(node):
            if _is_docstring(body, 0):
                out.add(id(body[0].value))
    return out


def _main_guard_nodes(tree: ast.Module) -> set[int]:
    """Nodes under `if __name__ == "__main__":` (never run by the tests)."""
    out: set[int] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "__name__" in ast.unparse(stmt.test):
            out.update(id(n) for n in ast.walk(stmt))
    return out


# -- splicing ------------------------------------------------------------------

class _Text:
    def __init__(self, source: str) -> None:
        self.data = source.encode()
        self.starts = [0]
        for i, b in enumerate(self.data):
            if b == 0x0A:
                self.starts.append(i + 1)

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.starts[node.lineno - 1] + node.col_offset,
                self.starts[node.end_lineno - 1] + node.end_col_offset)

    def splice(self, start: int, end: int, text: str) -> str:
        return (self.data[:start] + text.encode() + self.data[end:]).decode()


def _replace_copy(tree: ast.Module, target: ast.AST, replacement: ast.AST) -> ast.Module:
    memo: dict[int, object] = {id(target): replacement}
    return copy.deepcopy(tree, memo)


def generate(source: str, file: str = "submission.py", operators: Iterable[str] | None = None,
             start: int = 1) -> list[Mutant]:
    """Every mutant of `source` for the given operators (default: all), in
    file order. Raises SyntaxError if the source does not parse."""
    names = list(operators) if operators is not None else list(OPERATORS)
    unknown = [n for n in names if n not in OPERATORS]
    if unknown:
        raise ValueError(f"unknown mutation operators {unknown}; known: {', '.join(OPERATORS)}")
    tree = ast.parse(source)
    text = _Text(source)
    skip = _docstring_nodes(tree) | _main_guard_nodes(tree)
    # (offset, order, operator, description, new source, line, column)
    found: list[tuple[int, int, str, str, str, int, int]] = []
    seen: set[str] = {source}   # two operators making the same text: one mutant
    order = 0
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        for name in names:
            for target, replacement, description in OPERATORS[name](node):
                if id(target) in skip or not hasattr(target, "lineno"):
                    continue
                mutated = _apply(tree, text, target, replacement)
                if mutated is None or mutated in seen:
                    continue
                seen.add(mutated)
                order += 1
                found.append((text.span(target)[0], order, name, description, mutated, target.lineno,
                              target.col_offset))
    found.sort(key=lambda f: (f[0], f[1]))
    return [Mutant(id=f"m{start + i:03d}", file=file, operator=op, line=line, col=col, description=desc,
                   original=source, source=mutated)
            for i, (_pos, _order, op, desc, mutated, line, col) in enumerate(found)]


def _apply(tree: ast.Module, text: _Text, target: ast.AST, replacement: ast.AST) -> str | None:
    """The source with `target` replaced, checked against the intended tree."""
    want = ast.dump(_replace_copy(tree, target, replacement))
    start, end = text.span(target)
    new = ast.unparse(replacement)
    candidates = [new] if isinstance(target, ast.stmt) else [new, f"({new})"]
    for candidate in candidates:
        mutated = text.splice(start, end, candidate)
        try:
            if ast.dump(ast.parse(mutated)) == want:
                return mutated
        except SyntaxError:
            continue
    return None


def mutants_for(files: dict[str, bytes], operators: Iterable[str] | None = None,
                skip: Callable[[str], bool] = lambda name: False) -> list[Mutant]:
    """Mutants of every Python file in `files` (a solution folder), numbered
    across files. Files that are not UTF-8 Python, or do not parse, are skipped."""
    out: list[Mutant] = []
    for name in sorted(files):
        if not name.endswith(".py") or skip(name):
            continue
        try:
            source = files[name].decode("utf-8")
            out += generate(source, name, operators, start=len(out) + 1)
        except (UnicodeDecodeError, SyntaxError):
            continue
    return out
