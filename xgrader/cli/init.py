"""`xgrader init`: scaffold a working assignment to edit.

Each kind gets a small exercise: the configuration, a description, a
reference solution, one visible and one hidden test, a correct sample and
two wrong ones (one caught by the visible test, one only by the hidden test
and explained by a feedback signature), so `xgrader check` passes at once
and shows every part of an assignment at work.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

EPILOG = """\
kinds:
  pytest    functions tested by pytest files (public_tests/ visible, tests/ hidden)
  io        a program: stdin in, stdout compared (tests/cases.toml)
  notebook  functions tested by pytest; students upload a Jupyter notebook (.ipynb)
Then edit the files (docs/assignments.md) and run the check it prints.
Exit 0 when created, 2 on a bad name or an existing folder.
"""

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}){0,3}")

_PYTEST_TOML = '''\
# A function exercise graded by pytest (docs/assignments.md, kind "pytest").
# `xgrader check` grades solution/ and samples/: correct* must get full
# marks, every other sample less.
title = "Count the vowels"
max_points = 3
kind = "pytest"
functions = ["count_vowels"]   # a submission without them gets a "missing function" explanation
test_timeout_s = 2.0           # per test: every call into student code is bounded by it

[limits]
wall_s = 5
memory_mb = 128

# Tests weigh 1 unless a rule says otherwise (first match wins). tests/ is
# hidden from students, public_tests/ is shown.
[[tests]]
pattern = "test_uppercase_vowels"
weight = 2

# Feedback for a known mistake. A hidden test is matched by its name (and the
# exception raised) only, so no hidden input or value is revealed.
[[feedback.signatures]]
title = "Capital letters are vowels too"
message = "Count 'A', 'E', 'I', 'O' and 'U' as well: compare ch.lower() with the vowels."
test = "test_uppercase_vowels"
'''

_PYTEST_FILES = {
    "description.md": '''\
# Count the vowels

Write a function `count_vowels(text)` in `submission.py` that **returns** how
many letters of the string `text` are vowels (`a`, `e`, `i`, `o`, `u`, in lower
or upper case).

```python
>>> count_vowels("banana")
3
```
''',
    "solution/submission.py": '''\
def count_vowels(text):
    """How many letters of text are vowels (a, e, i, o, u; any case)."""
    return sum(1 for ch in text.lower() if ch in "aeiou")
''',
    "public_tests/test_examples.py": '''\
"""Visible to students: name, input, expected and actual value when it fails."""

from submission import count_vowels


def test_banana():
    assert count_vowels("banana") == 3
''',
    "tests/test_hidden.py": '''\
"""Hidden: students see pass or fail only."""

from submission import count_vowels


def test_uppercase_vowels():
    assert count_vowels("AEIOU and sky") == 6
''',
    "samples/correct.py": '''\
def count_vowels(text):
    count = 0
    for ch in text:
        if ch in "aeiouAEIOU":
            count += 1
    return count
''',
    "samples/wrong_prints.py": '''\
def count_vowels(text):
    print(sum(1 for ch in text if ch in "aeiouAEIOU"))
''',
    "samples/wrong_lowercase_only.py": '''\
def count_vowels(text):
    return sum(1 for ch in text if ch in "aeiou")
''',
}

_IO_TOML = '''\
# A program exercise (docs/assignments.md, kind "io"): main.py runs once per
# case of tests/cases.toml with its stdin; its stdout is compared with the
# reference solution's. `xgrader check` grades solution/ and samples/:
# correct* must get full marks, every other sample less.
title = "Add up the numbers"
max_points = 2
kind = "io"
entry = "main.py"
test_timeout_s = 1.0           # per case

[limits]
wall_s = 3
memory_mb = 128

[compare]
mode = "whitespace"            # or exact, numeric, regex, unordered_lines

# Feedback for a known mistake. A hidden case is matched by its name and the
# exception raised only, so no hidden input or value is revealed.
[[feedback.signatures]]
title = "Blank lines"
message = "The input can have blank lines: skip them (`if line.strip():`) before calling int()."
exception = "ValueError"
'''

_IO_FILES = {
    "description.md": '''\
# Add up the numbers

Write a program `main.py` that reads whole numbers from standard input, one
per line, and prints their sum. Skip blank lines.

```
$ printf '1\\n2\\n3\\n' | python main.py
6
```
''',
    "solution/main.py": '''\
import sys

print(sum(int(line) for line in sys.stdin if line.strip()))
''',
    "tests/cases.toml": '''\
# One [[case]] per run: stdin in, stdout compared with what solution/main.py
# prints (computed once, cached). Cases are hidden unless visible = true.
[[case]]
name = "three numbers"
stdin = "1\\n2\\n3\\n"
visible = true

[[case]]
name = "blank lines and negatives"
stdin = "10\\n\\n-4\\n\\n"
''',
    "samples/correct.py": '''\
import sys

total = 0
for word in sys.stdin.read().split():
    total += int(word)
print(total)
''',
    "samples/wrong_running_total.py": '''\
import sys

total = 0
for line in sys.stdin:
    if line.strip():
        total += int(line)
        print(total)
''',
    "samples/wrong_blank_lines.py": '''\
import sys

print(sum(int(line) for line in sys.stdin))
''',
}

_NOTEBOOK_TOML = '''\
# A notebook exercise (docs/assignments.md, "Submission forms"): students
# upload a Jupyter .ipynb (or a marimo notebook); its code cells become the
# `submission` module, graded by pytest like kind "pytest". `xgrader check`
# grades solution/ and samples/: correct* must get full marks, others less.
title = "The mean of a list"
max_points = 3
kind = "pytest"
functions = ["mean"]
test_timeout_s = 2.0

[limits]
wall_s = 5
memory_mb = 128

[[tests]]
pattern = "test_empty_list_raises"
weight = 2

# Feedback for a known mistake, matched on the exception the code raised.
[[feedback.signatures]]
title = "An empty list"
message = "The mean of no numbers is undefined: raise ValueError when the list is empty, before dividing."
exception = "ZeroDivisionError"
'''

_NOTEBOOK_FILES = {
    "description.md": '''\
# The mean of a list

In a notebook, define `mean(numbers)`: it **returns** the arithmetic mean of
a non-empty list of numbers as a float, and raises `ValueError` for an empty
list. Upload the `.ipynb` file.

```python
>>> mean([1, 2, 3, 4])
2.5
```
''',
    "solution/submission.py": '''\
def mean(numbers):
    """The arithmetic mean of a non-empty list; ValueError for an empty one."""
    if not numbers:
        raise ValueError("mean of an empty list")
    return sum(numbers) / len(numbers)
''',
    "public_tests/test_examples.py": '''\
"""Visible to students: name, input, expected and actual value when it fails."""

import pytest

from submission import mean


def test_mean_of_four():
    assert mean([1, 2, 3, 4]) == pytest.approx(2.5)
''',
    "tests/test_hidden.py": '''\
"""Hidden: students see pass or fail only."""

import pytest

from submission import mean


def test_empty_list_raises():
    with pytest.raises(ValueError):
        mean([])
''',
}

# (markdown, code) cells of the notebook samples.
_NOTEBOOK_SAMPLES = {
    "samples/correct.ipynb": [
        ("markdown", "# The mean of a list"),
        ("code", "def mean(numbers):\n    if len(numbers) == 0:\n        raise ValueError('no numbers')\n"
                 "    return sum(numbers) / len(numbers)"),
        ("code", "mean([1, 2, 3, 4])"),
    ],
    "samples/wrong_integer_division.ipynb": [
        ("code", "def mean(numbers):\n    if not numbers:\n        raise ValueError('no numbers')\n"
                 "    return sum(numbers) // len(numbers)"),
    ],
    "samples/wrong_empty_list.ipynb": [
        ("code", "def mean(numbers):\n    return sum(numbers) / len(numbers)"),
        ("code", "print(mean([2, 4]))"),
    ],
}

KINDS = {"pytest": (_PYTEST_TOML, _PYTEST_FILES), "io": (_IO_TOML, _IO_FILES),
         "notebook": (_NOTEBOOK_TOML, _NOTEBOOK_FILES)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init", help="scaffold a working assignment (solution, tests, samples) to edit",
        description="Create the folder NAME under the handlers root with a small working exercise of "
        "the chosen kind: assignment.toml, description.md, a reference solution, one visible and one "
        "hidden test, a correct sample and two wrong ones. `xgrader check` passes on it as created.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="assignment name, also the payload's grader (e.g. week1/vowels)")
    p.add_argument("--kind", choices=sorted(KINDS), default="pytest", help="handler kind (default pytest)")
    p.add_argument("--handlers", type=Path, default=Path("."), metavar="DIR",
                   help="assignments root to create it in (default: the current folder)")
    p.set_defaults(func=run)


def files_for(kind: str) -> dict[str, bytes]:
    """Every file of a new assignment of `kind`, by relative path."""
    config, texts = KINDS[kind]
    files = {"assignment.toml": config.encode(), **{k: v.encode() for k, v in texts.items()}}
    if kind == "notebook":
        import nbformat

        for path, cells in _NOTEBOOK_SAMPLES.items():
            nb = nbformat.v4.new_notebook()
            nb.cells = [nbformat.v4.new_markdown_cell(src) if kind_ == "markdown" else nbformat.v4.new_code_cell(src)
                        for kind_, src in cells]
            files[path] = nbformat.writes(nb).encode()
    return files


def run(args: argparse.Namespace) -> int:
    if not NAME.fullmatch(args.name):
        print(f"xgrader init: {args.name!r} is not a usable name (letters, digits, _ . -; "
              "up to 4 levels separated by /)", file=sys.stderr)
        return 2
    root = args.handlers
    target = root / args.name
    if target.exists():
        print(f"xgrader init: {target} already exists", file=sys.stderr)
        return 2
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written aside, then moved into place: no half-made assignment on an error.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for rel, data in files_for(args.kind).items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(data)
        staging.chmod(0o755)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"created {target}/ (kind {args.kind}):")
    for rel in sorted(files_for(args.kind)):
        print(f"  {rel}")
    print(f"check it:  xgrader check --handlers {root} {args.name}")
    print(f"grade one: xgrader grade --handlers {root} --payload {args.name} FILE")
    return 0
