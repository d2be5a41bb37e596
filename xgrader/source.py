"""The student's source, read on the trusted side: parsed once per submission,
with bounds, for the built-in explanations (xgrader.explain), code signatures
(xgrader.signatures) and line lookups.

A hostile source must not crash or stall the grader: files over
MAX_FILE_BYTES are not parsed (their lines are still shown), a parse that
fails for any reason (SyntaxError, RecursionError or MemoryError on deep
nesting, ValueError on NUL bytes) gives no tree, and a tree with more than
MAX_NODES nodes or deeper than MAX_DEPTH is dropped before anything walks it.
Every walk here is iterative. Nothing is executed: only `ast.parse`.

Source lines shown to the student are taken from the files as submitted,
never from what the sandbox reports (the student's code could rewrite its
own files while running).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

MAX_FILE_BYTES = 64_000     # parsing 64 KB takes ~50 ms; typical submissions are < 2 KB
MAX_FILES = 20
MAX_NODES = 40_000
MAX_DEPTH = 150
MAX_LINE_CHARS = 300

NOTEBOOK_MARKER = re.compile(r"^# --- notebook cell (\d+) ---$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?")
LOOPS = (ast.For, ast.While, ast.AsyncFor)
FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def bounded_parse(text: str) -> ast.Module | None:
    """ast.parse within the bounds above, or None."""
    parsed = _parse_with_nodes(text)
    return parsed[0] if parsed is not None else None


def _parse_with_nodes(text: str) -> tuple[ast.Module, list[ast.AST]] | None:
    """The tree and its nodes in ast.walk's order (breadth first), when it
    parses within the bounds; size and depth checked iteratively, before any
    recursive use of the tree."""
    if len(text) > MAX_FILE_BYTES:
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None
    nodes: list[ast.AST] = [tree]
    depths = [0]
    i = 0
    while i < len(nodes):
        if depths[i] > MAX_DEPTH:
            return None
        depth = depths[i] + 1
        for child in _children(nodes[i]):
            nodes.append(child)
            depths.append(depth)
        if len(nodes) > MAX_NODES:
            return None
        i += 1
    return tree, nodes


def _children(node: ast.AST) -> Iterator[ast.AST]:
    """ast.iter_child_nodes, without its iter_fields layer."""
    for name in node._fields:
        value = getattr(node, name, None)
        if isinstance(value, ast.AST):
            yield value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, ast.AST):
                    yield item


def walk(node: ast.AST) -> Iterator[ast.AST]:
    """ast.walk (already iterative), named here so callers read the same."""
    return ast.walk(node)


def dotted(node: ast.AST) -> str | None:
    """`a.b.c` for Name/Attribute chains, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def call_name(call: ast.Call) -> str | None:
    """The called name as written: `sorted`, `x.sort` -> `sort` is in calls() too."""
    return dotted(call.func) or (call.func.attr if isinstance(call.func, ast.Attribute) else None)


@dataclass
class FallThrough:
    """Why a function can end without `return value`."""

    kind: str          # "no_return" | "if" | "loop" | "end" | "bare_return"
    line: int          # the statement responsible (or the function's last line)


@dataclass
class Source:
    """The submission's Python files (text), the entry first."""

    files: dict[str, str]
    entry: str
    _own_memo: dict[str, list[ast.AST]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, files: dict[str, bytes], entry: str) -> "Source":
        """The submission's .py files (decoded, not parsed yet: parsing
        happens on first use, so a grading that needs no analysis pays nothing)."""
        texts: dict[str, str] = {}
        names = [entry] if entry in files else []
        names += sorted(n for n in files if n.endswith(".py") and n != entry)
        for name in names[:MAX_FILES]:
            texts[name] = files[name].decode("utf-8", "replace")
        return cls(files=texts, entry=entry)

    @cached_property
    def _parsed(self) -> dict[str, tuple[ast.Module, list[ast.AST]]]:
        out = {}
        for name, text in self.files.items():
            parsed = _parse_with_nodes(text)
            if parsed is not None:
                out[name] = parsed
        return out

    @cached_property
    def trees(self) -> dict[str, ast.Module]:
        """The files that parse within the bounds."""
        return {name: parsed[0] for name, parsed in self._parsed.items()}

    @cached_property
    def nodes(self) -> dict[str, list[ast.AST]]:
        """Every node of each parsed file in ast.walk order, from the walk
        that bounded it: the analyses below (several per failing test) read
        these lists instead of walking again."""
        return {name: parsed[1] for name, parsed in self._parsed.items()}

    def own_nodes(self, name: str) -> list[ast.AST]:
        """The nodes of function `name`'s body, not those of functions,
        classes or lambdas nested in it (none for an unknown name)."""
        found = self._own_memo.get(name)
        if found is None:
            fn = self.functions.get(name)
            found = self._own_memo[name] = list(_own_nodes(fn)) if fn is not None else []
        return found

    # -- lines ---------------------------------------------------------------
    @cached_property
    def _lines(self) -> dict[str, list[str]]:
        return {name: text.splitlines() for name, text in self.files.items()}

    def line(self, file: str, number: int) -> str | None:
        lines = self._lines.get(file)
        if not lines or not isinstance(number, int) or not 0 < number <= len(lines):
            return None
        text = lines[number - 1].rstrip()
        return text[:MAX_LINE_CHARS] if text.strip() else None

    def location(self, file: str, number: int) -> str:
        """'line 7', 'cell 4, line 2' (a converted notebook), 'line 3 of cleaning.py'."""
        cell = self.cell(file, number)
        where = f"cell {cell[0]}, line {cell[1]}" if cell else f"line {number}"
        return where if file == self.entry else f"{where} of {file}"

    def cell(self, file: str, number: int) -> tuple[int, int] | None:
        """(notebook cell, line within it) when `file` came from a notebook."""
        lines = self._lines.get(file) or []
        if not lines or not any(NOTEBOOK_MARKER.match(x) for x in lines[:3]):
            return None
        for i in range(min(number, len(lines)) - 1, -1, -1):
            m = NOTEBOOK_MARKER.match(lines[i])
            if m:
                return int(m.group(1)), number - 1 - i
        return None

    def notebook_traceback(self, text: str) -> str:
        """Tracebacks name the cell: `File "submission.py", cell 4, line 2, in f`."""
        def swap(m: re.Match) -> str:
            cell = self.cell(m.group(1), int(m.group(2)))
            return m.group(0) if cell is None else f'File "{m.group(1)}", cell {cell[0]}, line {cell[1]}'
        return re.sub(r'File "([^"\n]+)", line (\d+)', swap, text)

    # -- words (for the message safety rules) ---------------------------------
    @cached_property
    def words(self) -> set[str]:
        """Every identifier-like word and number written anywhere in the files."""
        out: set[str] = set()
        for text in self.files.values():
            out.update(_WORD.findall(text[:MAX_FILE_BYTES]))
        return out

    @cached_property
    def string_constants(self) -> list[str]:
        out = []
        for nodes in self.nodes.values():
            for node in nodes:
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(out) < 2000:
                    out.append(node.value)
        return out

    # -- definitions -------------------------------------------------------------
    @cached_property
    def functions(self) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
        """Functions of the entry module by name: top-level `f` and methods `C.m` (and `m`)."""
        out: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        tree = self.trees.get(self.entry)
        if tree is None:
            return out
        for node in tree.body:
            if isinstance(node, FUNCS):
                out[node.name] = node
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, FUNCS):
                        out[f"{node.name}.{item.name}"] = item
                        out.setdefault(item.name, item)
        return out

    @cached_property
    def top_level_names(self) -> set[str]:
        tree = self.trees.get(self.entry)
        names: set[str] = set()
        for node in (tree.body if tree else []):
            if isinstance(node, (*FUNCS, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        return names

    def enclosing(self, file: str, number: int, kinds: tuple) -> ast.AST | None:
        """The innermost node of `kinds` whose lines contain `number`."""
        best = None
        for node in self.nodes.get(file, ()):
            if isinstance(node, kinds) and node.lineno <= number <= (node.end_lineno or node.lineno):
                if best is None or node.lineno >= best.lineno:
                    best = node
        return best

    # -- code signatures -------------------------------------------------------------
    @cached_property
    def calls(self) -> set[str]:
        """Called names: `sorted`, and for `x.sort()` both `sort` and `x.sort`."""
        out: set[str] = set()
        for nodes in self.nodes.values():
            for node in nodes:
                if isinstance(node, ast.Call):
                    if isinstance(node.func, ast.Name):
                        out.add(node.func.id)
                    elif isinstance(node.func, ast.Attribute):
                        out.add(node.func.attr)
                        full = dotted(node.func)
                        if full:
                            out.add(full)
        return out

    def call_lines(self, names: list[str]) -> list[int]:
        """Lines of the entry file that call one of `names` (as `calls` matches them)."""
        wanted = set(names)
        lines = []
        for node in self.nodes.get(self.entry, ()):
            if isinstance(node, ast.Call):
                found = {node.func.id} if isinstance(node.func, ast.Name) else \
                    {node.func.attr, dotted(node.func) or ""} if isinstance(node.func, ast.Attribute) else set()
                if found & wanted:
                    lines.append(node.lineno)
        return sorted(lines)

    @cached_property
    def uses(self) -> set[str]:
        """Constructs used (see USES): `while`, `recursion`, `import:os`..."""
        out: set[str] = set()
        simple = {ast.While: "while", ast.For: "for", ast.Global: "global", ast.Nonlocal: "nonlocal",
                  ast.Lambda: "lambda", ast.Try: "try", ast.ClassDef: "class", ast.With: "with",
                  ast.Yield: "yield", ast.YieldFrom: "yield", ast.ListComp: "comprehension",
                  ast.SetComp: "comprehension", ast.DictComp: "comprehension",
                  ast.GeneratorExp: "comprehension", ast.Assert: "assert", ast.Break: "break",
                  ast.Continue: "continue"}
        for nodes in self.nodes.values():
            for node in nodes:
                kind = simple.get(type(node))
                if kind:
                    out.add(kind)
                if isinstance(node, ast.Import):
                    out.add("import")
                    for alias in node.names:
                        out.update(_import_forms(alias.name))
                elif isinstance(node, ast.ImportFrom):
                    out.add("import")
                    out.update(_import_forms(node.module or ""))
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                        and node.func.id in ("eval", "exec", "print", "input", "open"):
                    out.add(node.func.id)
        if self.recursive:
            out.add("recursion")
        return out

    @cached_property
    def recursive(self) -> dict[str, int]:
        """Functions that call themselves by name -> the line of the first such call."""
        out: dict[str, int] = {}
        for name, fn in self.functions.items():
            short = name.split(".")[-1]
            for node in walk(fn):
                if isinstance(node, ast.Call):
                    target = node.func
                    called = target.id if isinstance(target, ast.Name) else \
                        target.attr if isinstance(target, ast.Attribute) and \
                        isinstance(target.value, ast.Name) and target.value.id in ("self", "cls") else None
                    if called == short:
                        out.setdefault(name, node.lineno)
                        break
        return out

    def matches(self, pattern: ast.AST) -> list[int]:
        """Lines where an AST pattern (xgrader.signatures.compile_pattern) matches."""
        lines = []
        for nodes in self.nodes.values():
            for node in nodes:
                if type(node) is type(pattern) and _match(node, pattern, 0):
                    lines.append(getattr(node, "lineno", 0))
                    if len(lines) >= 20:
                        return lines
        return lines

    # -- function analyses (built-in explanations) ---------------------------------
    def fall_through(self, name: str) -> FallThrough | None:
        """How function `name` can end without returning a value, or None if it always does."""
        fn = self.functions.get(name)
        if fn is None:
            return None
        returns = [n for n in self.own_nodes(name) if isinstance(n, ast.Return)]
        if not any(r.value is not None for r in returns):
            return FallThrough("no_return", fn.lineno)
        bare = next((r for r in returns if r.value is None), None)
        reason = _falls(fn.body)
        if reason is None:
            return FallThrough("bare_return", bare.lineno) if bare is not None else None
        return reason

    def early_return(self, name: str) -> int | None:
        """The line of a loop in function `name` that returns during its first
        pass: its body ends in `return`, or in an `if`/`else` whose branches
        both return (so later items are never looked at)."""
        for node in self.own_nodes(name):
            if isinstance(node, LOOPS) and node.body and not _has_continue(node):
                last = node.body[-1]
                if isinstance(last, ast.Return) or (
                        isinstance(last, ast.If) and last.orelse and _ends_in_return(last.body)
                        and _ends_in_return(last.orelse)):
                    return node.lineno
        return None

    def returns_text(self, name: str) -> int | None:
        """The line of a `return` that gives back text (str(...), an f-string, a string literal, '%'/format)."""
        for node in self.own_nodes(name):
            if isinstance(node, ast.Return) and node.value is not None and _is_text(node.value):
                return node.lineno
        return None

    def prints_in(self, name: str | None) -> list[int]:
        """Lines of print(...) calls in function `name` (and what it calls by name), else the module."""
        seen: set[str] = set()
        todo = [name] if name else []
        lines: list[int] = []
        while todo and len(seen) < 20:
            current = todo.pop()
            if current in seen or current not in self.functions:
                continue
            seen.add(current)
            for node in self.own_nodes(current):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    if node.func.id == "print":
                        lines.append(node.lineno)
                    elif node.func.id in self.functions:
                        todo.append(node.func.id)
        if not lines and self.entry in self.trees:
            lines = [n.lineno for n in self.nodes[self.entry] if isinstance(n, ast.Call)
                     and isinstance(n.func, ast.Name) and n.func.id == "print"]
        return sorted(set(lines))

    def mutates_parameter(self, name: str) -> int | None:
        """The line where function `name` changes a parameter in place (append, sort, x[i] = ...)."""
        fn = self.functions.get(name)
        if fn is None:
            return None
        params = {a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)} - {"self", "cls"}
        methods = {"append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse", "update",
                   "add", "discard", "popitem", "setdefault"}
        lines = []
        for node in self.own_nodes(name):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in params \
                    and node.func.attr in methods:
                lines.append(node.lineno)
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AugAssign) else \
                node.targets if isinstance(node, ast.Delete) else []
            for t in targets:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id in params:
                    lines.append(node.lineno)
        return min(lines) if lines else None


def _import_forms(module: str) -> set[str]:
    """`import:os` for os and os.path; `import:os.path` for os.path."""
    parts = module.split(".")
    return {"import:" + ".".join(parts[:i]) for i in range(1, len(parts) + 1) if parts[0]}


def _own_nodes(fn: ast.AST) -> Iterator[ast.AST]:
    """Nodes of a function body, not descending into nested functions, classes or lambdas."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (*FUNCS, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def _is_text(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Call):
        return (isinstance(node.func, ast.Name) and node.func.id in ("str", "repr", "input")) or \
            (isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join", "upper", "lower"))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return isinstance(node.left, (ast.Constant, ast.JoinedStr)) and _is_text(node.left)
    return False


def _ends_in_return(stmts: list[ast.stmt]) -> bool:
    return bool(stmts) and isinstance(stmts[-1], (ast.Return, ast.Raise))


def _has_continue(loop: ast.AST) -> bool:
    stack = list(loop.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Continue):
            return True
        if not isinstance(node, (*LOOPS, *FUNCS, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return False


def _always_true(test: ast.expr) -> bool:
    return isinstance(test, ast.Constant) and bool(test.value)


def _has_break(loop: ast.AST) -> bool:
    stack = list(loop.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Break):
            return True
        if not isinstance(node, (*LOOPS, *FUNCS, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return False


def _falls(stmts: list[ast.stmt]) -> FallThrough | None:
    """Can this statement list complete normally? The reason if so, else None.
    Iterative over the list; compound statements recurse at most to MAX_DEPTH
    (the tree was bounded by bounded_parse)."""
    last = None
    for stmt in stmts:
        reason = _stmt_falls(stmt)
        if reason is None:
            return None          # what follows is unreachable
        last = reason
    return last or FallThrough("end", stmts[-1].end_lineno or stmts[-1].lineno if stmts else 0)


def _stmt_falls(stmt: ast.stmt) -> FallThrough | None:
    end = FallThrough("end", stmt.end_lineno or stmt.lineno)
    if isinstance(stmt, (ast.Return, ast.Raise)):
        return None
    if isinstance(stmt, ast.If):
        body = _falls(stmt.body)
        if not stmt.orelse:
            return body if body is not None and body.kind != "end" else FallThrough("if", stmt.lineno)
        orelse = _falls(stmt.orelse)
        if body is None and orelse is None:
            return None
        return body if body is not None and body.kind != "end" else orelse or body
    if isinstance(stmt, ast.While) and _always_true(stmt.test) and not _has_break(stmt):
        return None
    if isinstance(stmt, LOOPS):
        return FallThrough("loop", stmt.lineno)
    if isinstance(stmt, ast.Try):
        if stmt.finalbody and _falls(stmt.finalbody) is None:
            return None
        paths = [_falls(stmt.body + stmt.orelse)] + [_falls(h.body) for h in stmt.handlers]
        live = [p for p in paths if p is not None]
        return live[0] if live else None
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return _falls(stmt.body)
    return end


def _match(node: object, pattern: object, depth: int) -> bool:
    """Structural match of a student node against a pattern node: `_` matches
    any expression or name, `...` in a list matches any run of items.
    Depth follows the (small, instructor-written) pattern."""
    if depth > 60:
        return False
    if isinstance(pattern, ast.Name) and pattern.id == "_":
        return isinstance(node, ast.expr) or isinstance(node, str)
    if _is_ellipsis(pattern):
        return isinstance(node, ast.AST)
    if isinstance(pattern, list):
        return _match_list(node, pattern, depth) if isinstance(node, list) else False
    if isinstance(pattern, ast.AST):
        if type(node) is not type(pattern):
            return False
        for name in pattern._fields:
            if name in ("ctx", "type_comment", "kind"):
                continue
            if not _match(getattr(node, name, None), getattr(pattern, name, None), depth + 1):
                return False
        return True
    if isinstance(pattern, str) and pattern == "_":
        return True
    return node == pattern


def _is_ellipsis(p: object) -> bool:
    return (isinstance(p, ast.Expr) and isinstance(p.value, ast.Constant) and p.value.value is ...) or \
        (isinstance(p, ast.Constant) and p.value is ...)


def _match_list(nodes: list, pats: list, depth: int) -> bool:
    """Pattern items against a list of nodes, `...` matching any run: the
    positions reachable after each pattern item (no recursion over the list)."""
    positions = {0}
    for p in pats:
        if _is_ellipsis(p):
            positions = set(range(min(positions), len(nodes) + 1))
        else:
            positions = {i + 1 for i in positions if i < len(nodes) and _match(nodes[i], p, depth + 1)}
        if not positions:
            return False
    return len(nodes) in positions
