"""Configuration of the "image" and "mutation" kinds (docs/assignments.md).

    [image]            ImageOptions   (assignment.toml)
    tests/cases.toml   ImageCase      one [[case]] per image the student's code writes
    [mutation]         MutationOptions (assignment.toml)
    mutants/           one mutant per NAME.py (the implementation file replaced)
                       or NAME/ (files replacing solution/ files), optional
                       mutants.toml: [NAME] description, weight, visible

Kept apart from xgrader/assignment.py, which reads these through
:func:`load_image_cases` and :func:`load_mutants`. Errors name the file and
the field.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xgrader.errors import AssignmentError
from xgrader.tomlfile import read_toml, where
from xgrader.extras import missing_for_kind

# The largest image any assignment may accept: Pillow's own decompression-bomb
# ceiling is set to it (xgrader/handlers/image_kind.py), so even a header
# that slips past the per-assignment check cannot make Pillow allocate more.
HARD_MAX_PIXELS = 16_000_000
# The runner sends a file back as base64 in one channel line (4 MiB at most).
HARD_MAX_BYTES = 3_000_000
MUTANTS_DIR = "mutants"
MUTANTS_FILE = "mutants.toml"
# What `xgrader mutants --write DIR` leaves beside each mutant's files.
MUTANT_NOTES = {"MUTANT.txt"}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _relative_file(v: str) -> str:
    p = PurePosixPath(v)
    if (not v or p.is_absolute() or ".." in p.parts or "\\" in v
            or any(ord(c) < 32 for c in v) or len(v) > 200):
        raise ValueError("must be a relative file name inside the job folder")
    return v


class ImageOptions(_Strict):
    """[image]: defaults for every image case."""

    output: str = "output.png"   # the file the student's code writes (relative to its folder)
    # A pixel is hot when one of its channels (R, G, B, A) differs by more than this.
    threshold: int = Field(0, ge=0, le=255)
    max_hot: float = Field(0.0, ge=0, le=1)            # share of hot pixels a case allows
    max_pixels: int = Field(1_000_000, ge=1, le=HARD_MAX_PIXELS)
    max_bytes: int = Field(2_000_000, ge=1024, le=HARD_MAX_BYTES)
    diff_image: bool = True      # visible cases show a small difference image

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        return _relative_file(v)


class ImageCase(_Strict):
    """One [[case]] of an image assignment's tests/cases.toml: `expr` (an
    expression evaluated in the student's module) or `stdin` (the entry file
    run as a program with this input) writes `output`."""

    name: str = ""
    expr: str | None = None
    stdin: str | None = None
    output: str | None = None          # default [image].output
    expected: str | None = None        # an image file under tests/; None: from solution/
    threshold: int | None = Field(None, ge=0, le=255)
    max_hot: float | None = Field(None, ge=0, le=1)
    weight: float = Field(1.0, ge=0)
    visible: bool = False
    timeout_s: float | None = Field(None, gt=0)

    @field_validator("output", "expected")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return None if v is None else _relative_file(v)

    @model_validator(mode="after")
    def _one_kind(self) -> "ImageCase":
        if (self.expr is None) == (self.stdin is None):
            raise ValueError("a case needs exactly one of `expr` or `stdin`")
        return self


class MutationOptions(_Strict):
    """[mutation]: grading the student's own pytest tests."""

    min_tests: int = Field(1, ge=0)    # fewer tests (collected, not skipped) than this: no points
    # How often the suite runs against the reference, each at a random place
    # among the mutant runs: a suite that fails at random must pass every time.
    reference_runs: int = Field(2, ge=1, le=5)
    parallel: int = Field(2, ge=1, le=8)   # runs at once


class MutantEntry(_Strict):
    """One [NAME] table of mutants.toml."""

    description: str = Field("", max_length=500)   # the behaviour it changes, shown for visible mutants
    weight: float = Field(1.0, ge=0)
    visible: bool = False


class Mutant(BaseModel):
    """A loaded mutant: the files that replace the reference's."""

    model_config = ConfigDict(frozen=True)

    name: str
    files: dict[str, bytes]
    description: str = ""
    weight: float = 1.0
    visible: bool = False


def load_image_cases(folder: Path, tests: dict[str, bytes], solution: dict[str, bytes],
                     entry: str) -> list[ImageCase]:
    path = folder / "tests" / "cases.toml"
    raw = read_toml(path)
    unknown = set(raw) - {"case"}
    if unknown:
        raise AssignmentError(f"{path}: unknown top-level keys {sorted(unknown)} (use [[case]] tables)")
    cases = []
    for i, item in enumerate(raw.get("case", [])):
        try:
            case = ImageCase.model_validate(item)
        except ValidationError as exc:
            raise AssignmentError(f"{path}: case {i + 1}: {where(exc)}") from None
        if case.expected is not None and case.expected not in tests:
            raise AssignmentError(f"{path}: case {i + 1}: field expected: tests/{case.expected} missing")
        cases.append(case)
    if not cases:
        raise AssignmentError(f"{path}: no [[case]] entries")
    if any(c.expected is None for c in cases) and entry not in solution:
        raise AssignmentError(f"{folder / 'solution'}: {entry} missing (needed to compute the expected images)")
    return cases


def load_mutants(folder: Path, solution: dict[str, bytes], implementation: str,
                 read_tree: Any, budget: list[int]) -> list[Mutant]:
    """mutants/NAME.py replaces `implementation`; mutants/NAME/ replaces the
    solution files it holds (and nothing else: every implementation has the
    same set of files). mutants.toml describes them."""
    root = folder / MUTANTS_DIR
    if implementation not in solution:
        raise AssignmentError(f"{folder / 'solution'}: {implementation} missing (the implementation the "
                              "students' tests import)")
    found: dict[str, dict[str, bytes]] = {}
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.name.startswith(".") or path.name in ("__pycache__", MUTANTS_FILE):
                continue
            if path.is_symlink():
                raise AssignmentError(f"{path}: symlinks are not allowed in an assignment folder")
            if path.is_file() and path.suffix == ".py":
                name, files = path.stem, {implementation: path.read_bytes()}
                budget[0] -= len(files[implementation])
            elif path.is_dir():
                name = path.name
                files = {k: v for k, v in read_tree(path, budget).items() if k not in MUTANT_NOTES}
                extra = sorted(set(files) - set(solution))
                if extra:
                    raise AssignmentError(f"{path}: {extra[0]} is not a file of solution/ (a mutant only "
                                          "replaces the reference's files)")
            else:
                raise AssignmentError(f"{path}: a mutant is a .py file or a folder")
            if not _NAME.match(name):
                raise AssignmentError(f"{path}: mutant names are letters, digits, '_', '.', '-'")
            if not files:
                raise AssignmentError(f"{path}: empty mutant")
            if all(solution.get(k) == v for k, v in files.items()):
                raise AssignmentError(f"{path}: identical to the reference solution")
            found[name] = files
    if not found:
        raise AssignmentError(f"{root}: no mutants (mutants/NAME.py or mutants/NAME/)")
    meta: dict[str, MutantEntry] = {}
    meta_path = root / MUTANTS_FILE
    if meta_path.is_file():
        for name, item in read_toml(meta_path).items():
            if name not in found:
                raise AssignmentError(f"{meta_path}: [{name}]: no mutant of that name in {root}")
            if not isinstance(item, dict):
                raise AssignmentError(f"{meta_path}: {name}: expected a [{name}] table")
            try:
                meta[name] = MutantEntry.model_validate(item)
            except ValidationError as exc:
                raise AssignmentError(f"{meta_path}: [{name}]: {where(exc)}") from None
    out = []
    for name, files in found.items():
        m = meta.get(name, MutantEntry())
        out.append(Mutant(name=name, files=files, description=m.description.strip(), weight=m.weight,
                          visible=m.visible))
    if sum(m.weight for m in out) <= 0:
        raise AssignmentError(f"{meta_path}: every mutant has weight 0")
    return out


def lint_kind(assignment: Any) -> tuple[list[str], list[str]]:
    """`xgrader check`'s errors and warnings for the image and mutation kinds."""
    errors: list[str] = []
    warnings: list[str] = []
    root = assignment.root
    if assignment.config.kind == "image":
        cases = assignment.image_cases
        if not any(c.visible for c in cases):
            warnings.append(f"{root / 'tests' / 'cases.toml'}: no visible case (students only see pass/fail)")
        names = [c.name or f"case {i + 1}" for i, c in enumerate(cases)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            errors.append(f"{root / 'tests' / 'cases.toml'}: duplicate case names {dupes}")
        missing = missing_for_kind("image")
        if missing:
            errors.append(missing)
    else:
        if not any(PurePosixPath(n).name.startswith("test_") for n in assignment.tests):
            warnings.append(f"{root / 'tests'}: no model test suite (test_*.py): `xgrader check` cannot "
                            "show that every mutant can be caught")
        if not any(m.visible and m.description for m in assignment.mutants):
            warnings.append(f"{root / MUTANTS_DIR / MUTANTS_FILE}: no visible mutant with a description "
                            "(students only learn how many survived)")
        quiet = [m.name for m in assignment.mutants if m.visible and not m.description]
        if quiet:
            warnings.append(f"{root / MUTANTS_DIR / MUTANTS_FILE}: visible mutants without a description: "
                            f"{', '.join(quiet)}")
    return errors, warnings
