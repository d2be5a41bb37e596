"""Built-in explanations: the standard library of feedback signatures that
ships with xgrader (docs/feedback.md, "Built-in explanations").

They turn what the grader saw while a test ran (report.Evidence) into
feedback a student can act on even when every test is hidden, without
revealing anything hidden:

- text is built from the student's own source (line numbers, source lines
  read from the files as submitted, names defined there), type names and
  fixed wording;
- the only runtime text shown for a hidden test is an exception's message,
  and only when :func:`safe_message` passes it: every word in it occurs in
  the student's source or in Python's own message vocabulary, numbers only
  in a message the student wrote literally (or an argument count), and no
  literal of the hidden test (its inputs, its expected result) occurs in
  it, numbers compared by value. Otherwise a fixed paraphrase is shown;
- wrong values are described by kind only: "returned None", "a str where a
  number was expected", "fewer items than expected", never by value.

Each explanation names its signature (the keys of BUILTINS): criteria refer
to them, the coverage checker counts them, and `[feedback] explain_skip`
switches them off one by one (`explain = false`: all of them; the grader
then shows the exception type of a hidden test's error only).
"""

from __future__ import annotations

import ast
import builtins
import functools
import math
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from xgrader.report import Evidence, Explanation, TestReport, TestStatus
from xgrader.source import FUNCS, LOOPS, Source

if TYPE_CHECKING:
    from xgrader.assignment import Assignment

# name -> what it explains (docs and `explain_skip` validation read this).
BUILTINS: dict[str, str] = {
    "syntax_error": "a syntax error: line, column and the source line",
    "missing_function": "a function or class the exercise needs is not defined (with a close name it does define)",
    "load_error": "the module failed while loading (an error or a missing module at import time)",
    "runtime_error": "an exception in a test: type, message when safe, line and source line, 'did you mean'",
    "wrong_arguments": "the function's parameters do not match how the tests call it",
    "recursion": "a RecursionError: the recursive line",
    "called_input": "the function calls input() although the grader passes arguments",
    "time_limit": "still running at the time limit: the loop or line it was in when stopped",
    "returns_none": "returned None: the path that ends without `return`",
    "prints_instead_of_returning": "printed the answer and returned None",
    "returned_instead_of_printing": "returned the answer where it should be printed",
    "str_not_number": "returned text where a number was expected",
    "number_not_str": "returned a number where text was expected",
    "list_vs_tuple": "a list where a tuple was expected, or the other way round (also their items)",
    "bool_vs_int": "an int where True/False was expected, or the other way round",
    "float_vs_int": "a float where an int was expected, or the other way round",
    "wrong_type": "another type than expected",
    "empty_result": "an empty result where one was expected",
    "wrong_length": "more or fewer items than expected",
    "wrong_order": "the right items in another order",
    "wrong_keys": "a dictionary with other keys than expected",
    "letter_case": "differs only in upper/lower case",
    "whitespace": "differs only in spaces or line breaks",
    "off_by_one": "a whole number that is 1 away from the expected one",
    "rounding": "a number close to, but not equal to, the expected one",
    "extra_output": "printed more lines than expected (debug prints, input() prompts)",
    "missing_output": "printed nothing, or fewer lines than expected",
    "output_format": "the same numbers as expected, in other wording around them",
    "mutated_argument": "the function changed a list or dict it was given",
    "did_not_raise": "no exception where the tests expect one (pytest.raises)",
    "early_return": "a loop that returns during its first pass (a wrong result)",
    "memory_limit": "the memory limit was hit",
    "output_limit": "the output limit was hit",
    "stopped": "the program ended itself (exit(), os._exit()) or crashed while tested",
}

MAX_BUILTIN = 6   # distinct built-in explanations per submission (the feedback shows 10 notes at most)

# ----------------------------------------------------------------- safety

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PY_TEXT = """
unsupported operand type s for object is not subscriptable callable iterable has no attribute name
defined did you mean division by zero float modulo integer list index out of range string tuple
assignment takes positional argument arguments but were was given missing required keyword only got
an unexpected multiple values can only concatenate to invalid literal with base could convert math
domain error maximum recursion depth exceeded while calling a python comparison in unhashable type of
len cannot access local variable where it associated value referenced before too many values unpack
expected enough supported between instances and must be real number sequence item instance found
empty arg pop from dictionary set key changed size during iteration does support deletion eof when
reading line the first element or too large overflow result big substring not found x nonetype
function method builtin_function_or_method module generator dict_keys dict_values dict_items
range_iterator list_iterator str_iterator bool complex bytes non keys int str list dict set
frozenset tuple at least most exactly index out object's allowed negative shift count format
specifier unknown code character codec can't decode encode byte position
"""
PY_WORDS = frozenset(w.lower() for w in _PY_TEXT.split()) | frozenset(n.lower() for n in dir(builtins))
# Messages whose numbers are counts of arguments or values, never data.
_COUNT_MESSAGES = re.compile(
    r"^[\w.<>]+\(\) (takes|missing|got|expected)\b|^(too many|not enough) values to unpack\b")


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def atoms_of_value(value: Any, out: set[str] | None = None, depth: int = 0) -> set[str]:
    """Numbers and words of a (hidden) value, as text."""
    out = set() if out is None else out
    if depth > 20 or len(out) > 2000:
        return out
    if isinstance(value, bool) or value is None:
        return out
    if isinstance(value, (int, float)):
        if not (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
            out.add(repr(value) if isinstance(value, float) else str(value))
    elif isinstance(value, str):
        out |= atoms_of_text(value, literal=True)
    elif isinstance(value, bytes):
        out |= atoms_of_text(value.decode("utf-8", "replace"), literal=True)
    elif isinstance(value, dict):
        for k, v in list(value.items())[:500]:
            atoms_of_value(k, out, depth + 1)
            atoms_of_value(v, out, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in list(value)[:500]:
            atoms_of_value(v, out, depth + 1)
    return out


def atoms_of_text(text: str, literal: bool = False) -> frozenset[str]:
    """Numbers and words of a hidden input (an expression, stdin, expected text).
    An expression's string literals count whole and by word; `literal`: `text`
    is itself a value (the whole of it is an atom). The same hidden inputs come
    back with every submission: answers for short texts are remembered."""
    text = text[:20_000]
    return _remembered_atoms(text, literal) if len(text) <= 500 else _atoms(text, literal)


def _atoms(text: str, literal: bool) -> frozenset[str]:
    out: set[str] = set()
    if literal:
        if 2 <= len(text.strip()) <= 200:
            out.add(text.strip())
    else:
        try:
            tree = ast.parse(text, mode="eval") if len(text) < 5000 else None
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            tree = None
        if tree is not None:
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
                    atoms_of_value(node.value, out)
                elif isinstance(node, (ast.UnaryOp, ast.BinOp)):
                    try:   # folded constants (-45, 10**20 + 1), bounded
                        folded = ast.literal_eval(node) if isinstance(node, ast.UnaryOp) else _fold(node)
                    except (ValueError, TypeError, SyntaxError, ArithmeticError, RecursionError, MemoryError):
                        folded = None
                    if folded is not None:
                        atoms_of_value(folded, out)
    out.update(m.group() for m in _NUMBER.finditer(text))
    out.update(w for w in _WORD.findall(text) if len(w) >= 2)
    return frozenset(out)


_remembered_atoms = functools.lru_cache(maxsize=4096)(_atoms)


def _fold(node: ast.BinOp) -> Any:
    """A small constant arithmetic expression's value (no huge powers)."""
    left = ast.literal_eval(node.left) if not isinstance(node.left, ast.BinOp) else _fold(node.left)
    right = ast.literal_eval(node.right) if not isinstance(node.right, ast.BinOp) else _fold(node.right)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (left, right)):
        return None
    if isinstance(node.op, ast.Pow):
        return left ** right if abs(right) <= 200 and abs(left) <= 10**6 else None
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}
    fn = ops.get(type(node.op))
    return fn(left, right) if fn else None


def _contains(text: str, value: str) -> bool:
    """`value` occurs in `text` as a whole token run, ignoring case."""
    pattern = (r"(?<![\w])" if value[0].isalnum() or value[0] == "_" else "") + re.escape(value) \
        + (r"(?![\w])" if value[-1].isalnum() or value[-1] == "_" else "")
    return re.search(pattern, text, re.IGNORECASE) is not None


def has_secret(text: str, secrets: Iterable[str]) -> bool:
    """Does `text` hold one of a hidden test's literals? Numbers by value
    (33.830 is 33.83, -45 and 45 both reveal 45), words and strings as
    whole tokens ignoring case."""
    numbers: set[float] = set()
    words = []
    for s in secrets:
        if _is_number(s):
            try:
                numbers.add(abs(float(s)))
            except (OverflowError, ValueError):
                pass
        elif len(s) >= 2:
            words.append(s)
    for m in _NUMBER.finditer(text):
        try:
            if abs(float(m.group())) in numbers:
                return True
        except (OverflowError, ValueError):
            continue
    return any(_contains(text, w) for w in words)


# Python messages that carry the offending value, and what is shown instead
# (fixed text: nothing of the value).
_VALUE_MESSAGES = [
    (re.compile(r"^invalid literal for int\(\) with base \d+: ", re.S),
     "invalid literal for int(): the text is not a whole number"),
    (re.compile(r"^could not convert string to float: ", re.S),
     "could not convert string to float: the text is not a number"),
    (re.compile(r"^.* is not in list$", re.S), "list.index() did not find the value it was asked for"),
    (re.compile(r"^Exceeds the limit \(\d+ digits\)", re.S), "the integer is too long to convert to text"),
    (re.compile(r"^unsupported format character ", re.S), "unsupported format character"),
    (re.compile(r"^(math range error|integer division or modulo by zero|division by zero)$"), None),
]


def paraphrase(etype: str, text: str) -> str | None:
    """Fixed wording for a Python message that holds a value, or None."""
    if etype == "KeyError":
        return "a key that is not in the dictionary was looked up"
    for pattern, replacement in _VALUE_MESSAGES:
        if pattern.match(text):
            return replacement
    return None


def safe_message(text: str, source: Source, secrets: Iterable[str], literal_only: bool = False) -> str | None:
    """`text` (an exception's message from a hidden test) if it reveals nothing
    hidden, else None (the caller paraphrases). `literal_only`: the student's
    own `raise` made it, so it must be written literally in their source."""
    text = " ".join(str(text).split())
    if not text:
        return ""
    if literal_only and not any(text in s for s in source.string_constants):
        return None
    counts = _COUNT_MESSAGES.search(text) is not None
    # The numbers of "f() takes 1 positional argument but 2 were given" are counts, not data.
    if len(text) > 300 or has_secret(_NUMBER.sub(" ", text) if counts else text, secrets):
        return None
    static = any(text in s for s in source.string_constants)   # the student wrote it literally
    source_words = {w.lower() for w in source.words}
    for token in _NUMBER.findall(text) + _WORD.findall(text):
        if _is_number(token):
            if not (static or counts):
                return None
        elif token.lower() not in source_words and token.lower() not in PY_WORDS:
            return None
    return text


# -------------------------------------------------------- did you mean (CPython's)

_MOVE_COST, _CASE_COST, _MAX_STRING = 2, 1, 40


def _substitution_cost(a: str, b: str) -> int:
    if a == b:
        return 0
    return _CASE_COST if a.lower() == b.lower() else _MOVE_COST


def _levenshtein(a: str, b: str, max_cost: int) -> int:
    """Python/suggestions.c's distance, as traceback.py ports it."""
    if a == b:
        return 0
    pre = 0
    while a[pre:] and b[pre:] and a[pre] == b[pre]:
        pre += 1
    a, b = a[pre:], b[pre:]
    post = 0
    while a[:post or None] and b[:post or None] and a[post - 1] == b[post - 1]:
        post -= 1
    a, b = a[:post or None], b[:post or None]
    if not a or not b:
        return _MOVE_COST * (len(a) + len(b))
    if len(a) > _MAX_STRING or len(b) > _MAX_STRING:
        return max_cost + 1
    if len(b) < len(a):
        a, b = b, a
    if (len(b) - len(a)) * _MOVE_COST > max_cost:
        return max_cost + 1
    row = list(range(_MOVE_COST, _MOVE_COST * (len(a) + 1), _MOVE_COST))
    result = 0
    for bindex, bchar in enumerate(b):
        distance = result = bindex * _MOVE_COST
        minimum = sys.maxsize
        for index in range(len(a)):
            substitute = distance + _substitution_cost(bchar, a[index])
            distance = row[index]
            result = min(min(result, distance) + _MOVE_COST, substitute)
            row[index] = result
            minimum = min(minimum, result)
        if minimum > max_cost:
            return max_cost + 1
    return result


def suggest(wrong: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate as Python's 'Did you mean' picks it, or None."""
    best, best_distance = None, sys.maxsize
    for c in list(dict.fromkeys(candidates))[:750]:
        if c == wrong:
            continue
        limit = min((len(c) + len(wrong) + 3) * _MOVE_COST // 6, best_distance - 1)
        d = _levenshtein(wrong, c, limit)
        if d <= limit:
            best, best_distance = c, d
    return best


def _defined_names(source: Source) -> set[str]:
    names: set[str] = set()
    for tree in source.trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (*FUNCS, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
    return names


def _attributes(source: Source) -> set[str]:
    names: set[str] = set()
    for tree in source.trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, FUNCS):
                names.add(node.name)
    return names


def did_you_mean(etype: str, message: str, source: Source, extra: Source | None = None) -> str | None:
    """Python's suggestion for a NameError or AttributeError, from names the
    submission itself defines (and the prelude's, builtins, and a builtin
    type's attributes)."""
    if etype in ("NameError", "UnboundLocalError"):
        m = re.match(r"name '(\w+)' is not defined", message)
        if not m:
            return None
        names = sorted(_defined_names(source) | (_defined_names(extra) if extra is not None else set()))
        found = suggest(m.group(1), names + dir(builtins))
    elif etype == "AttributeError" and message.startswith("module "):
        m = re.match(r"module '(\w+)' has no attribute '(\w+)'", message)
        module = sys.modules.get(m.group(1)) if m and m.group(1) in sys.stdlib_module_names else None
        if module is None:
            return None
        found = suggest(m.group(2), [a for a in dir(module) if not a.startswith("_")])
    elif etype == "AttributeError":
        m = re.match(r"'(\w+)' object has no attribute '(\w+)'", message)
        if not m:
            return None
        kind = getattr(builtins, m.group(1), None)
        candidates = [a for a in dir(kind) if not a.startswith("_")] if isinstance(kind, type) \
            else sorted(_attributes(source))
        found = suggest(m.group(2), candidates)
    else:
        return None
    # Shown only if it is a name of the source or Python's own: never runtime data.
    if found and (found in source.words or hasattr(builtins, found) or etype == "AttributeError"
                  or (extra is not None and found in extra.words)):
        return found
    return None


# ---------------------------------------------------------------- drafts

@dataclass
class Draft:
    """One explanation before tests are counted and titles are finished."""

    signature: str
    title: str                   # without the "in N hidden tests" part
    detail: str = ""
    file: str | None = None
    line: int | None = None
    source_line: str | None = None
    traceback: str | None = None
    specific: bool = True
    with_tests: bool = True      # add "in test X / in 2 hidden tests" to the title
    tests: list[TestReport] = field(default_factory=list)

    def key(self) -> tuple:
        return (self.signature, self.title, self.file, self.line)


def _where_tests(tests: list[TestReport]) -> str:
    visible = [t.name for t in tests if t.visible]
    hidden = sum(not t.visible for t in tests)
    parts = []
    if visible:
        parts.append(f"test {visible[0]}" + (f" and {len(visible) - 1} more" if len(visible) > 1 else ""))
    if hidden:
        parts.append("a hidden test" if hidden == 1 and not visible else
                     f"{hidden} hidden test{'s' if hidden > 1 else ''}")
    return "in " + " and ".join(parts) if parts else ""


def finish(draft: Draft, source: Source | None) -> Explanation:
    title = draft.title
    if draft.with_tests and draft.tests:
        title += " " + _where_tests(draft.tests)
    location = None
    if draft.line and draft.file and source is not None:
        location = source.location(draft.file, draft.line)
    return Explanation(
        title=title, detail=draft.detail, line=draft.line, source_line=draft.source_line,
        traceback=draft.traceback, location=location, signature=draft.signature, specific=draft.specific,
        tests=[t.test_id or t.name for t in draft.tests],
    )


def _own_frame(frames: list | None, source: Source) -> tuple[str, int] | None:
    """The innermost [file, line] in one of the student's files."""
    for file, line in reversed(frames or []):
        if file in source.files:
            return file, line
    return None


def _fn(ev: Evidence, source: Source) -> str | None:
    """The student function whose result the test compared, when known."""
    return ev.function


def _last_called(ev: Evidence, source: Source) -> str | None:
    for name in reversed(ev.called):
        if name in source.functions:
            return name
    return ev.called[-1] if ev.called else None


def _code(name: str | None) -> str:
    return f"`{name}`" if name else "Your code"


def _items_of(fn: str | None) -> str:
    return f"The items `{fn}` returns" if fn else "The items of the result your code gave"


def _type_name(value: Any) -> str:
    names = {str: "text (a str)", int: "an int", float: "a float", bool: "a bool (True/False)",
             list: "a list", tuple: "a tuple", dict: "a dict", set: "a set", frozenset: "a frozenset",
             type(None): "None", bytes: "bytes", complex: "a complex number"}
    if type(value) in names:
        return names[type(value)]
    return f"an object ({getattr(value, 'type_name', type(value).__name__)})"


# ------------------------------------------------------------- diagnoses

class Explainer:
    """Diagnoses of one submission's tests (each test's Evidence)."""

    def __init__(self, assignment: "Assignment", source: Source) -> None:
        self.assignment = assignment
        self.source = source
        fb = assignment.config.feedback
        self.on = fb.explain
        self.skip = set(fb.explain_skip)

    def enabled(self, name: str) -> bool:
        return self.on and name not in self.skip

    def at(self, file: str, line: int) -> tuple[str, int, str | None]:
        return file, line, self.source.line(file, line)

    # -- runtime errors ----------------------------------------------------
    def runtime_error(self, t: TestReport, ev: Evidence) -> list[Draft]:
        err = ev.error or {}
        etype = str(err.get("type") or "Exception")
        message = str(err.get("message") or "")
        frames = err.get("frames") or []
        own = _own_frame(frames, self.source)
        show_tb = self.assignment.config.feedback.show_traceback
        called = re.match(r"([\w.]+)\(\) (takes|missing|got)\b", message)
        arity = etype == "TypeError" and called is not None and (
            not frames or called.group(1).split(".")[-1] in self.source.functions)
        if arity and self.enabled("wrong_arguments"):
            safe = message if _COUNT_MESSAGES.search(message) else None
            return [Draft("wrong_arguments", "Your function's parameters do not match how it is called",
                          (f"{safe.rstrip('.')}. " if safe else "") + "Check the number, order and names of the "
                          "parameters the exercise asks for.", with_tests=False)]
        if not self.enabled("runtime_error"):
            return [self._legacy_error(t, etype, message, err, show_tb)]
        if etype == "RecursionError" and self.enabled("recursion"):
            rec = err.get("recursion")
            place = rec if rec and rec[0] in self.source.files else own
            d = Draft("recursion", "Your function never stops calling itself (RecursionError)",
                      "Python gave up after about 1000 nested calls. Check the base case: the call that "
                      "returns without calling again must be reached, and each call must get closer to it.")
            if place:
                d.file, d.line, d.source_line = self.at(*place)
                d.detail = (f"The recursive call is on {self.source.location(d.file, d.line)}. " + d.detail)
            return [d]
        where = self.at(*own) if own else None
        if etype == "EOFError" and ev.check == "program" and self.enabled("runtime_error"):
            d = Draft("runtime_error", "Your program reads past the end of its input (EOFError)",
                      "input() was called after the last line of the input. Read until the input ends "
                      "(for line in sys.stdin: ...) instead of a fixed number of times, and allow blank or "
                      "missing lines.")
            if where:
                d.file, d.line, d.source_line = where
            return [d]
        if etype == "EOFError" and (message.startswith("EOF when reading") or
                                    (where and "input(" in (where[2] or ""))) and self.enabled("called_input"):
            d = Draft("called_input", "Your code calls input()",
                      "The grader calls your function with arguments and types nothing on a keyboard, so "
                      "input() fails (EOFError). Take the values as the function's parameters instead "
                      "of asking for them.")
            if where:
                d.file, d.line, d.source_line = where
            return [d]
        # A KeyError's message is the key itself: data, never shown for a hidden test. A
        # message the student's own `raise` built is shown only when written literally.
        raised_here = where is not None and (where[2] or "").lstrip().startswith("raise")
        shown = message if t.visible else None if etype == "KeyError" else \
            safe_message(message, self.source, ev.secrets, literal_only=raised_here)
        if not shown and not t.visible:
            shown = paraphrase(etype, message)
        detail = f"{etype}: {shown}." if shown else \
            f"{etype} (its message is not shown: it holds values from a hidden test)."
        hint = did_you_mean(etype, message, self.source, self.assignment.prelude_source) if shown else None
        if hint:
            detail += f" Did you mean: {hint!r}?"
        advice = ADVICE.get(etype)
        if "NoneType" in message and etype in ("TypeError", "AttributeError"):
            detail += (" A value here is None: often the result of a function that does not return "
                       "anything, or of a method like list.sort() that changes the list and returns None.")
        elif advice:
            detail += f" {advice[0].upper()}{advice[1:]}."
        d = Draft("runtime_error", f"Your code raised {etype}", detail, specific=bool(where or shown or hint))
        if where:
            d.file, d.line, d.source_line = where
            d.detail = f"At {self.source.location(d.file, d.line)}: " + d.detail
        if t.visible and show_tb and err.get("traceback"):
            d.traceback = self.source.notebook_traceback(str(err["traceback"]))
        elif show_tb and len(frames) > 1:
            d.traceback = self.host_traceback(frames)
        return [d]

    def _legacy_error(self, t: TestReport, etype: str, message: str, err: dict, show_tb: bool) -> Draft:
        """explain off: the type (and, in a visible test, the message and traceback)."""
        if t.visible:
            return Draft("runtime_error", f"Your code raised {etype}", f"{etype}: {message}".strip(),
                         traceback=(err.get("traceback") or None) if show_tb else None, specific=False)
        return Draft("runtime_error", f"Your code raised {etype}",
                     "Check how your code handles other inputs than the examples.", specific=False)

    def host_traceback(self, frames: list) -> str | None:
        """The chain of the student's own calls, lines read from the submitted files."""
        out = []
        previous = None
        for file, line in frames[-8:]:
            if file not in self.source.files or [file, line] == previous:
                continue   # a comprehension's own frame repeats its line
            previous = [file, line]
            fn = self.source.enclosing(file, line, FUNCS)
            out.append(f'  File "{file}", {self.source.location(file, line).split(" of ")[0]}'
                       + (f", in {fn.name}" if fn is not None else "") + "\n")
            text = self.source.line(file, line)
            if text:
                out.append(f"    {text.strip()}\n")
        return "".join(out) if sum(x.startswith("  File") for x in out) > 1 else None

    # -- time limit ------------------------------------------------------------
    def time_limit(self, t: TestReport, ev: Evidence) -> list[Draft]:
        if not self.enabled("time_limit"):
            return []
        own = _own_frame(ev.sample, self.source)
        if own is None:
            return []
        file, line = own
        seconds = f"{ev.timeout_s:g} s" if ev.timeout_s else "the time limit"
        loop = self.source.enclosing(file, line, LOOPS)
        fn = self.source.enclosing(file, line, FUNCS)
        repeats = sum(1 for f in (ev.sample or []) if f == [file, line])
        if loop is not None:
            kind = "while" if isinstance(loop, ast.While) else "for"
            advice = ("Check that the loop ends: the variables its condition tests must change inside "
                      "the loop, on every path." if kind == "while" else
                      "This loop runs too many times or its body is too slow for this input: is the range "
                      "far larger than it needs to be (e.g. divisors only up to the square root)?")
            d = Draft("time_limit", f"Still running after {seconds}",
                      f"When it was stopped, your code was in the `{kind}` loop on "
                      f"{self.source.location(file, loop.lineno)}"
                      + (f" (at {self.source.location(file, line)})" if line != loop.lineno else "")
                      + (f", in {fn.name}" if fn is not None else "") + f". {advice}")
            d.file, d.line, d.source_line = self.at(file, loop.lineno)
        else:
            d = Draft("time_limit", f"Still running after {seconds}",
                      f"When it was stopped, your code was at {self.source.location(file, line)}"
                      + (f", in {fn.name}" if fn is not None else "")
                      + (" (calling itself over and over)" if repeats > 2 else "") + ".")
            d.file, d.line, d.source_line = self.at(file, line)
        return [d]

    # -- wrong values ---------------------------------------------------------
    def did_not_raise(self, t: TestReport, ev: Evidence) -> list[Draft]:
        """pytest.raises saw no exception. The exception's name is shown when the
        student can know it (a builtin, or named in the description or their code)."""
        m = re.match(r"DID NOT RAISE <class '(?:[\w.]*\.)?(\w+)'>", ev.message or "")
        if not m:
            return []
        name = m.group(1)
        if not (hasattr(builtins, name) or name.lower() in self.assignment.public_words or name in self.source.words):
            name = "the exception the exercise asks for"
        fn = _last_called(ev, self.source)
        return [Draft("did_not_raise", f"{_code(fn)} did not raise {name}",
                      f"The exercise expects {name} for some inputs, and your code returned normally. "
                      "Check the condition and the `raise` statement the exercise describes.")]

    def wrong_value(self, t: TestReport, ev: Evidence) -> list[Draft]:
        fn = _fn(ev, self.source)
        out: list[Draft] = []
        if ev.message and ev.message.startswith("DID NOT RAISE") and self.enabled("did_not_raise"):
            return self.did_not_raise(t, ev)
        if ev.check == "value" and ev.has_values:
            out += self.value_mismatch(fn, ev.actual_value, ev.expected_value, ev)
        elif ev.check in ("output", "program") and ev.actual is not None and ev.expected is not None:
            out += self.text_mismatch(fn, ev.actual, ev.expected, ev)
        if ev.check == "value" and not out and self.enabled("early_return"):
            name = fn or _last_called(ev, self.source)
            line = self.source.early_return(name) if name else None
            if line:
                d = Draft("early_return", f"{_code(name)} returns during the first pass of its loop",
                          "Every path through the loop's body ends in `return`, so only the first item "
                          "(or divisor, or digit) is ever looked at. Return the answer that needs every "
                          "item checked after the loop, not in an `else` inside it.")
                d.file, d.line, d.source_line = self.at(self.source.entry, line)
                out.append(d)
        if ev.mutated and self.enabled("mutated_argument"):
            fn = fn or _last_called(ev, self.source)
            line = self.source.mutates_parameter(fn) if fn else None
            d = Draft("mutated_argument", f"{_code(fn)} changes the argument it was given",
                      "The list (or dict) passed in is changed in place (sort, append, remove, an item "
                      "assigned). Work on a copy (sorted(x), list(x), dict(x)) or build a new result.")
            if line:
                d.file, d.line, d.source_line = self.at(self.source.entry, line)
            out.append(d)
        return [d for d in out if self.enabled(d.signature)]

    def value_mismatch(self, fn: str | None, a: Any, e: Any, ev: Evidence) -> list[Draft]:
        entry = self.source.entry
        if a is None and e is not None:
            prints = self.source.prints_in(fn)
            if ev.output.strip() and self.enabled("prints_instead_of_returning"):
                d = Draft("prints_instead_of_returning", f"{_code(fn)} prints its result instead of returning it",
                          "It printed something and returned None. The caller (and the grader) uses the "
                          "value a function returns: replace print(...) with return ....")
                if prints:
                    d.file, d.line, d.source_line = self.at(entry, prints[0])
                return [d]
            return [self.returns_none(fn)]
        ta, te = type(a), type(e)
        if ta is not te:
            return [self.type_mismatch(fn, a, e)]
        if isinstance(a, (list, tuple, set, frozenset, dict, str)) and not a and e:
            return [Draft("empty_result", f"{_code(fn)} returned an empty {ta.__name__}",
                          f"A non-empty {ta.__name__} was expected. Check that your loop runs and adds "
                          "to the result, and the conditions that decide what goes in.")]
        if isinstance(a, dict):
            return self.dict_mismatch(fn, a, e)
        if isinstance(a, (list, tuple, set, frozenset)) and _text_only(a, e, str.lower):
            return [Draft("letter_case", f"{_code(fn)} returned text that differs only in upper/lower case",
                          "Check the capitalisation the exercise asks for (e.g. lower-case the words).")]
        if isinstance(a, (list, tuple)) and a and e and len(a) == len(e):
            inner = self.item_types(fn, a, e)
            if inner:
                return [inner]
            if _same_items(a, e):
                return [Draft("wrong_order", f"{_code(fn)} returns the right items in another order",
                              "Check the order the exercise asks for (sorting, ties, the order "
                              "of the input).")]
            return []
        if isinstance(a, (list, tuple, set, frozenset)):
            if len(a) != len(e):
                more = "more" if len(a) > len(e) else "fewer"
                return [Draft("wrong_length", f"{_code(fn)} returned {more} items than expected",
                              "Check the conditions that decide which items go into the result "
                              "(boundaries: < or <=, the first and the last item).")]
            return []
        if isinstance(a, str):
            if a.lower() == e.lower():
                return [Draft("letter_case", f"{_code(fn)} returned text that differs only in upper/lower case",
                              "Check the capitalisation the exercise asks for.")]
            if a.split() == e.split():
                return [Draft("whitespace", f"{_code(fn)} returned text that differs only in spaces",
                              "Check spaces and line breaks (strip(), the separator in join()).")]
            return []
        if isinstance(a, int) and not isinstance(a, bool) and abs(a - e) == 1:
            return [Draft("off_by_one", f"{_code(fn)} is off by one",
                          "The result is 1 away from the expected one. Check the loop bounds (range's end "
                          "is excluded), < versus <=, and where counting starts.")]
        if isinstance(a, float) and math.isfinite(a) and math.isfinite(e) and e != 0 and \
                math.isclose(a, e, rel_tol=1e-2):
            return [Draft("rounding", f"{_code(fn)} returned a number close to, but not equal to, the expected one",
                          "Do not round (or round only where the exercise says), and check the formula's "
                          "constants.")]
        return []

    def returns_none(self, fn: str | None) -> Draft:
        why = self.source.fall_through(fn) if fn else None
        entry = self.source.entry
        d = Draft("returns_none", f"{_code(fn)} returned None",
                  "A function that ends without `return value` gives back None.")
        if why is None:
            return d
        loc = self.source.location(entry, why.line)
        d.detail = {
            "no_return": f"{_code(fn)} has no `return` statement, so it gives back None. End it with "
                         "`return` and the result.",
            "if": f"When the condition of the `if` on {loc} is false, {_code(fn)} reaches its end "
                  "without a `return` (that `if` has no `else`), so it gives back None.",
            "loop": f"When the loop on {loc} finishes without returning, {_code(fn)} reaches its end "
                    "without a `return`, so it gives back None. Add a `return` after the loop.",
            "end": f"{_code(fn)} can reach its end (after {loc}) without a `return`, so it gives back None.",
            "bare_return": f"The `return` on {loc} has no value, so it gives back None.",
        }[why.kind]
        d.file, d.line, d.source_line = self.at(entry, why.line)
        return d

    def type_mismatch(self, fn: str | None, a: Any, e: Any) -> Draft:
        ta, te = type(a), type(e)
        what = f"{_code(fn)} returned {_type_name(a)} where {_type_name(e)} was expected"
        number = (int, float)
        if ta is str and te in number:
            d = Draft("str_not_number", f"{_code(fn)} returned text where a number was expected",
                      "Return the number itself, not str(...) or an f-string of it: the caller computes with it.")
            line = self.source.returns_text(fn) if fn else None
            if line:
                d.file, d.line, d.source_line = self.at(self.source.entry, line)
            return d
        if ta in number and te is str:
            return Draft("number_not_str", f"{_code(fn)} returned a number where text was expected",
                         "Return a str (e.g. str(x) or an f-string).")
        if {ta, te} == {list, tuple}:
            return Draft("list_vs_tuple", what, "A list ([...]) and a tuple ((...)) are not equal even with "
                         "the same items: return the kind the exercise asks for.")
        if ta is int and te is bool or ta is bool and te is int:
            return Draft("bool_vs_int", what, "True/False and 1/0 are different results here: return "
                         "a bool (a comparison, or True/False) when a yes/no answer is asked for."
                         if te is bool else "Return a number, not the result of a comparison.")
        if {ta, te} == {int, float}:
            return Draft("float_vs_int", what, "`/` always gives a float: use `//` for whole-number "
                         "division, or int(...)." if ta is float else "Return a float (e.g. use `/`).")
        return Draft("wrong_type", what, "Check the type the exercise asks your function to return.")

    def item_types(self, fn: str | None, a: list | tuple, e: list | tuple) -> Draft | None:
        pairs = [(type(x), type(y)) for x, y in zip(a, e)]
        if all(x is y for x, y in pairs):
            inner = next(((x, y) for x, y in zip(a, e) if isinstance(x, (list, tuple)) and len(x) == len(y)
                          and [type(i) for i in x] != [type(j) for j in y]), None)
            if inner is not None:
                got = ", ".join(type(i).__name__ for i in inner[0])
                want = ", ".join(type(j).__name__ for j in inner[1])
                return Draft("wrong_type", f"{_items_of(fn)} hold ({got}) where ({want}) was expected",
                             "Check the order and the type of the values inside each item.")
        diff = next(((x, y) for x, y in pairs if x is not y), None)
        if diff is None:
            return None
        x, y = diff
        names = {list: "lists", tuple: "tuples", str: "text (str)", int: "ints", float: "floats",
                 bool: "bools", dict: "dicts", type(None): "None"}
        kind = "list_vs_tuple" if {x, y} == {list, tuple} else \
            "str_not_number" if x is str and y in (int, float) else \
            "float_vs_int" if {x, y} == {int, float} else "wrong_type"
        return Draft(kind, f"{_items_of(fn)} are {names.get(x, x.__name__)} where "
                     f"{names.get(y, y.__name__)} were expected",
                     "Check the type of each item you put into the result.")

    def dict_mismatch(self, fn: str | None, a: dict, e: dict) -> list[Draft]:
        ka, ke = set(a), set(e)
        if ka == ke:
            return []
        if {str(k).lower() for k in ka} == {str(k).lower() for k in ke}:
            return [Draft("letter_case", f"The keys {_code(fn)} returns differ only in upper/lower case",
                          "Check whether the keys should be converted to lower case.")]
        missing, extra = len(ke - ka), len(ka - ke)
        parts = []
        if missing:
            parts.append(f"{missing} expected key{'s are' if missing > 1 else ' is'} missing")
        if extra:
            parts.append(f"{extra} key{'s' if extra > 1 else ''} should not be there")
        return [Draft("wrong_keys", f"The dictionary {_code(fn)} returns has other keys than expected",
                      "; ".join(parts).capitalize() + ". Check which items become keys (letter case, "
                      "punctuation, empty strings).")]

    def text_mismatch(self, fn: str | None, actual: str, expected: str, ev: Evidence) -> list[Draft]:
        a = [" ".join(x.split()) for x in actual.splitlines() if x.strip()]
        e = [" ".join(x.split()) for x in expected.splitlines() if x.strip()]
        program = ev.check == "program"
        who = "Your program" if program else _code(fn)
        prompts = [(p.strip(), line) for p, line in _input_prompts(self.source)
                   if p.strip() and p.strip() in actual and p.strip() not in expected]
        if prompts:
            d = Draft("extra_output", f"{who} prints input()'s prompt",
                      f"input() prints its prompt ({prompts[0][0]!r}) to the output, where it is compared with "
                      "the expected lines. Call input() without a prompt text.")
            d.file, d.line, d.source_line = self.at(self.source.entry, prompts[0][1])
            return [d]
        if not a and e:
            if not program and ev.actual_value is not None and self.enabled("returned_instead_of_printing"):
                return [Draft("returned_instead_of_printing", f"{who} returns its result instead of printing it",
                              "This exercise checks what the function prints: use print(...).")]
            return [Draft("missing_output", f"{who} printed nothing",
                          "Something was expected on the screen: check that print(...) is reached.")]
        if len(a) > len(e) and _subsequence(e, a):
            extra = [x for x in a if x not in e] or a[len(e):]
            shown = safe_message(extra[0], self.source, ev.secrets) if extra else None
            n = len(a) - len(e)
            detail = f"{n} extra line{'s' if n > 1 else ''}" + (f", such as: {shown!r}" if shown else "") + ". "
            detail += "Remove debug prints: the output is compared line by line."
            d = Draft("extra_output", f"{who} printed more than expected", detail)
            prints = self.source.prints_in(fn)
            if len(prints) == 1:
                d.file, d.line, d.source_line = self.at(self.source.entry, prints[0])
            return [d]
        if len(a) < len(e) and _subsequence(a, e):
            n = len(e) - len(a)
            return [Draft("missing_output", f"{who} printed fewer lines than expected",
                          f"{n} expected line{'s are' if n > 1 else ' is'} missing. Check the conditions "
                          "around your print calls.")]
        if len(a) == len(e):
            if [x.lower() for x in a] == [x.lower() for x in e]:
                return [Draft("letter_case", f"{who} printed text that differs only in upper/lower case",
                              "Check the capitalisation the exercise shows.")]
            kinds = [_line_kind(x, y) for x, y in zip(a, e) if x != y]
            first = next((i + 1 for i, (x, y) in enumerate(zip(a, e)) if x != y), None)
            at = f" (first on line {first} of the output)" if first else ""
            if kinds and all(k == "rounding" for k in kinds):
                return [Draft("rounding", f"{who} printed numbers with other decimals than expected",
                              f"The numbers are close but not the same{at}: check rounding and the format "
                              "(e.g. f\"{x:.2f}\").")]
            if kinds and all(k == "format" for k in kinds):
                return [Draft("output_format", f"{who} printed the right numbers in other wording",
                              f"The text around the numbers differs{at}: copy the exact labels and "
                              "punctuation of the example.")]
            if sorted(_NUMBER.findall(" ".join(a))) == sorted(_NUMBER.findall(" ".join(e))) and \
                    [_NUMBER.sub("#", x) for x in a] == [_NUMBER.sub("#", y) for y in e]:
                return [Draft("wrong_order", f"{who} printed the right numbers in other places",
                              f"Every expected number is there, but not on its line{at}: check which value "
                              "goes with which label.")]
            if kinds and all(k in ("off_by_one", "rounding") for k in kinds) and "off_by_one" in kinds:
                return [Draft("off_by_one", f"{who} printed a number that is off by one",
                              f"A whole number is 1 away from the expected one{at}: check counting and "
                              "boundaries (< versus <=).")]
        elif actual.split() == expected.split():
            return [Draft("whitespace", f"{who} printed the right words with other spacing",
                          "Check line breaks and spaces (print's sep= and end=).")]
        elif re.sub(r"[,;|]", " ", actual).split() == expected.split():
            return [Draft("output_format", f"{who} printed the right values with other separators",
                          "Print each value the way the example shows, on its own line, without "
                          "extra commas or semicolons.")]
        return []

    # -- per test --------------------------------------------------------------
    def diagnose(self, t: TestReport) -> list[Draft]:
        ev = t.evidence
        if ev is None or t.status in (TestStatus.passed, TestStatus.not_run, TestStatus.missing):
            return []
        if t.status is TestStatus.error and ev.error:
            drafts = self.runtime_error(t, ev)
        elif t.status is TestStatus.timeout:
            drafts = self.time_limit(t, ev)
        elif t.status is TestStatus.failed and self.on:
            drafts = self.wrong_value(t, ev)
        else:
            drafts = []
        for d in drafts:
            d.tests.append(t)
        return drafts


ADVICE = {
    "ZeroDivisionError": "a division or % by zero: check the case where the divisor, such as a count or a "
                         "length, is 0",
    "IndexError": "an index past the end of a list or string: check loop bounds and empty inputs",
    "KeyError": "a dictionary was asked for a key it does not have: check with `in` first, or use .get()",
    "TypeError": "an operation got a value of a type it cannot work with",
    "ValueError": "a function got a value of the right type but an unsuitable one, like int('abc')",
    "AttributeError": "the value does not have that attribute or method",
    "NameError": "a name is used that is not defined: a typo, or a variable used before it is set",
    "UnboundLocalError": "a local variable is used before it has a value on this path",
    "AssertionError": "an assert in your code failed",
    "OverflowError": "a number became too large",
    "StopIteration": "next() was called on an exhausted iterator",
    "ModuleNotFoundError": "a module could not be found: upload every file of your project",
    "ImportError": "an import failed: check the name and that the file is part of your submission",
}


def _text_only(a: Any, e: Any, norm: Any) -> bool:
    """Equal once every string in them is normalised (e.g. lower-cased)?"""
    try:
        return a != e and norm(repr(a)) == norm(repr(e))
    except Exception:
        return False


def _same_items(a: list | tuple, e: list | tuple) -> bool:
    try:
        return sorted(map(repr, a)) == sorted(map(repr, e))
    except Exception:
        return False


def _subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(any(x == y for y in it) for x in short)


def _input_prompts(source: Source) -> list[tuple[str, int]]:
    """(prompt text, line) of input("...") calls in the entry file."""
    out = []
    tree = source.trees.get(source.entry)
    for node in (ast.walk(tree) if tree is not None else ()):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "input" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            out.append((node.args[0].value, node.lineno))
    return out


def _line_kind(a: str, e: str) -> str:
    """How one output line differs: rounding | off_by_one | format | other."""
    na, ne = _NUMBER.findall(a), _NUMBER.findall(e)
    wa, we = _NUMBER.sub("#", a), _NUMBER.sub("#", e)
    if len(na) == len(ne) and na and wa == we:
        kinds = set()
        for x, y in zip(na, ne):
            fx, fy = float(x), float(y)
            if fx == fy:
                continue
            if "." not in x + y and abs(fx - fy) == 1:
                kinds.add("off_by_one")
            elif fy and math.isclose(fx, fy, rel_tol=1e-2, abs_tol=0.01):
                kinds.add("rounding")
            else:
                return "other"
        return kinds.pop() if len(kinds) == 1 else "other"
    if na and [float(x) for x in na] == [float(y) for y in ne] and wa != we:
        return "format"
    return "other"


# ---------------------------------------------------------- whole submission

def syntax_explanation(error: dict[str, Any], source: Source | None = None) -> Explanation:
    line = error.get("lineno")
    col = error.get("offset")
    text = (error.get("text") or "").rstrip("\n") or None
    file = str(error.get("filename") or (source.entry if source else ""))
    location = source.location(file, line) if source is not None and isinstance(line, int) and file else None
    where = f" on {location}" if location else (f" on line {line}" if isinstance(line, int) else "")
    return Explanation(
        title=f"Syntax error{where}",
        detail=str(error.get("message") or "invalid syntax"),
        line=line if isinstance(line, int) else None,
        column=col if isinstance(col, int) else None,
        source_line=text, location=location, signature="syntax_error", specific=True,
    )


def load_explanation(error: dict[str, Any], show_traceback: bool, source: Source | None) -> Explanation:
    """The module raised while loading (before any test): its message and
    traceback hold no test data, so they are shown as they are."""
    etype = str(error.get("type") or "Exception")
    message = str(error.get("message") or "")
    tb = (error.get("traceback") or None) if show_traceback else None
    expl = Explanation(title=f"Your code raised {etype} while loading",
                       detail=f"{etype}: {message}".strip(), traceback=tb, signature="load_error", specific=True)
    if source is None:
        return expl
    own = _own_frame(error.get("frames"), source)
    update: dict[str, Any] = {"traceback": source.notebook_traceback(tb) if tb else None}
    if own:
        update.update(line=own[1], source_line=source.line(*own), location=source.location(*own))
    advice = ADVICE.get(etype)
    if etype == "EOFError":
        update["detail"] = expl.detail + (". input() has nothing to read: the grader imports your code "
                                          "without a keyboard. Remove the input() calls that run at the top "
                                          "level (in a notebook: from the cells), or give the values directly.")
    elif etype in ("ModuleNotFoundError", "ImportError"):
        update["detail"] = expl.detail + (". Every file of your project must be part of the submission "
                                          "(upload them all, or one zip).")
    elif advice:
        update["detail"] = f"{expl.detail}. {advice[0].upper()}{advice[1:]}."
    return expl.model_copy(update=update)


def missing_explanation(names: list[str], source: Source | None = None, required: Iterable[str] = ()) -> Explanation:
    listed = ", ".join(names)
    plural = "s" if len(names) > 1 else ""
    detail = (f"The exercise needs {listed}, but your code does not define {'them' if plural else 'it'}. "
              "Check the spelling and that it is defined at the top level of your file.")
    if source is not None:
        required = list(required)
        # Another required name is not a misspelling of this one.
        defined = sorted(source.top_level_names - set(required) - set(names))
        close = [(n, suggest(n, defined)) for n in names]
        close = [(n, c) for n, c in close if c]
        if close:
            detail = " ".join(f"Your code defines {c}: is that meant to be {n}? Names must match exactly."
                              for n, c in close[:3])
        elif len(required) >= 2 and all(n in names for n in required):
            detail = (f"Your code defines none of the functions this exercise asks for ({', '.join(required)}). "
                      "Is this the right file (or notebook) for this exercise?")
    classes = [n for n in names if n[:1].isupper()]
    kind = "function" if not classes else "class" if len(classes) == len(names) else "name"
    return Explanation(title=f"Missing {kind}{'es' if plural and kind == 'class' else plural}: {listed}",
                       detail=detail, signature="missing_function", specific=True)


def timeout_while_loading(sample: list | None, seconds: float, source: Source | None) -> Explanation | None:
    """Loading the module ran into the time limit: where it was."""
    if source is None:
        return None
    own = _own_frame(sample, source)
    if own is None:
        return None
    loop = source.enclosing(own[0], own[1], LOOPS)
    line = loop.lineno if loop is not None else own[1]
    what = "in the loop on " if loop is not None else "at "
    return Explanation(
        title=f"Your module was still running after {seconds:g} s while loading",
        detail=f"Code at the top level of your file runs when the grader imports it; it was {what}"
               f"{source.location(own[0], line)} when stopped. Remove such code, or put it under "
               "`if __name__ == \"__main__\":` (in a notebook: delete the cell before submitting).",
        line=line, source_line=source.line(own[0], line), location=source.location(own[0], line),
        signature="time_limit", specific=True)


def builtin_explanations(assignment: "Assignment", tests: list[TestReport], source: Source | None) -> list[Explanation]:
    """The per-test diagnoses of a graded submission, merged: one explanation
    per kind and place, naming the tests it concerns."""
    if source is None:
        return []
    explainer = Explainer(assignment, source)
    merged: dict[tuple, Draft] = {}
    for t in tests:
        for d in explainer.diagnose(t):
            hit = merged.get(d.key())
            if hit is None:
                merged[d.key()] = d
            else:
                hit.tests.extend(d.tests)
    drafts = list(merged.values())
    # "printed instead of returning" says more than "returned None" about the same function.
    printing = {d.title.split(" prints ")[0]: d for d in drafts if d.signature == "prints_instead_of_returning"}
    for d in [d for d in drafts if d.signature == "returns_none"]:
        owner = printing.get(d.title.split(" returned ")[0])
        if owner is not None:
            owner.tests.extend(d.tests)
            drafts.remove(d)
    # Most tests first; specific before generic; at most MAX_BUILTIN.
    drafts.sort(key=lambda d: (not d.specific, -len(d.tests)))
    return [finish(d, source) for d in drafts[:MAX_BUILTIN]]
