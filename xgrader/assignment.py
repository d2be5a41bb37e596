"""One assignment folder, loaded and validated (see docs/assignments.md).

    <handlers root>/<name>/
        assignment.toml     AssignmentConfig (this module)
        tests/              hidden tests: pytest files, or cases.toml (io kind)
        solution/           reference solution (entry file name as the student's)
        public_tests/       optional visible pytest checks
        description.md      the problem statement (hints read it)
        samples/            known submissions: correct* full marks, others less
        files/              optional runtime files placed beside the submission

Everything is read once into memory (an :class:`Assignment` is immutable);
:class:`xgrader.dispatch.AssignmentRegistry` caches them per process.
Errors are :class:`AssignmentError` naming the file and the field.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xgrader.errors import AssignmentError
from xgrader.kind_config import ImageCase, ImageOptions, Mutant, MutationOptions, load_image_cases, load_mutants
from xgrader.mastery.catalog import valid_skill_id
from xgrader.backends.base import Limits

if TYPE_CHECKING:
    from xgrader.config import Settings

CONFIG_FILE = "assignment.toml"
CASES_FILE = "cases.toml"
# An assignment is instructor data, but a runaway folder must not eat memory.
MAX_FOLDER_BYTES = 20_000_000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CompareSpec(_Strict):
    """How an io case's actual result is compared with the expected one."""

    mode: Literal["exact", "whitespace", "numeric", "regex", "unordered_lines"] = "whitespace"
    rel_tol: float = Field(1e-9, ge=0)
    abs_tol: float = Field(0.0, ge=0)


class TestRule(_Strict):
    """pytest kind: the first rule whose pattern matches a test gives its
    weight and visibility. Patterns are fnmatch patterns tried against the
    test's function name (`test_small`), its name with parameters
    (`test_small[7-True]`) and its file-qualified name (`test_primes.py::test_small[7-True]`)."""

    pattern: str = Field(min_length=1)
    weight: float = Field(1.0, ge=0)
    visible: bool | None = None   # None: hidden for tests/, visible for public_tests/
    skills: list[str] | None = None  # skill ids (skills.toml) the test practises; None: the assignment's

    @field_validator("skills")
    @classmethod
    def _skills(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [valid_skill_id(s) for s in v]


class Case(_Strict):
    """io kind, one entry of tests/cases.toml. Exactly one of `expr`
    (expression test: evaluated in the student's module) or `stdin`
    (program test: the entry file runs as a program with this input)."""

    name: str = ""
    expr: str | None = None
    stdin: str | None = None
    # expr: a Python literal (ast.literal_eval); stdin: the expected stdout text;
    # regex mode: a pattern. None: computed once from solution/.
    expected: str | None = None
    # expr cases: compare the returned value (default) or what the call printed.
    check: Literal["value", "output"] = "value"
    weight: float = Field(1.0, ge=0)
    visible: bool = False
    timeout_s: float | None = Field(None, gt=0)
    compare: CompareSpec | None = None
    skills: list[str] | None = None  # skill ids the case practises; None: the assignment's

    @field_validator("skills")
    @classmethod
    def _skills(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [valid_skill_id(s) for s in v]

    @model_validator(mode="after")
    def _one_kind(self) -> "Case":
        if (self.expr is None) == (self.stdin is None):
            raise ValueError("a case needs exactly one of `expr` or `stdin`")
        return self


class FeedbackSignature(_Strict):
    """[[feedback.signatures]]: instructor-written feedback for a known mistake.
    It applies when some failed test meets every condition given. Hidden tests
    only offer `test` and `exception` (their values are never matched)."""

    title: str = Field(min_length=1, max_length=200)   # shown as the explanation's heading
    message: str = Field("", max_length=2000)          # how to fix it
    test: str | None = None        # fnmatch pattern on the test name ("test_empty*")
    exception: str | None = None   # exception type name the student's code raised ("ZeroDivisionError")
    actual: str | None = None      # regex searched in the actual value/output of a visible test
    output: str | None = None      # regex searched in what the code printed during a visible test

    @field_validator("actual", "output")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)  # a bad pattern fails at load, naming the field
            except re.error as exc:
                raise ValueError(f"bad regex: {exc}") from None
        return v

    @model_validator(mode="after")
    def _some_condition(self) -> "FeedbackSignature":
        if not any((self.test, self.exception, self.actual, self.output)):
            raise ValueError("a signature needs at least one of test, exception, actual, output")
        return self


class FeedbackOptions(_Strict):
    show_output: bool = True          # visible tests show what the student's code printed
    max_chars: int = Field(2000, ge=100)  # per field (output, actual, message)
    show_traceback: bool = True
    signatures: list[FeedbackSignature] = Field(default_factory=list)


class SubmissionOptions(_Strict):
    """Budgets for uploads and zip archives (xgrader.submissions)."""

    max_files: int = Field(100, ge=1)              # files after extraction (and zip entries)
    max_bytes: int = Field(5_000_000, ge=1024)     # total bytes actually read/decompressed
    max_name_chars: int = Field(200, ge=16)        # one relative path


class HintOptions(_Strict):
    """[hints] (docs/hints.md): a hint needs both the operator's switch
    (XGRADER_HINTS__ENABLED) and this one."""

    enabled: bool = False
    # planning (steps), debugging (one bug), optimisation (speed/readability);
    # a payload may choose another with a `hint` key.
    hint_type: Literal["planning", "debugging", "optimisation"] = "debugging"


class LimitsOverride(_Strict):
    """Any subset of Limits; the rest comes from the operator's defaults,
    and everything is clamped by the operator's ceilings."""

    wall_s: float | None = Field(None, gt=0)
    cpu_s: float | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, ge=16)
    pids: int | None = Field(None, ge=4)
    output_bytes: int | None = Field(None, ge=1024)
    tmp_mb: int | None = Field(None, ge=1)
    file_mb: int | None = Field(None, ge=1)
    open_files: int | None = Field(None, ge=16)


class AssignmentConfig(_Strict):
    """assignment.toml."""

    title: str = Field(min_length=1)
    max_points: float = Field(1.0, gt=0)
    kind: Literal["pytest", "io", "image", "mutation"]
    entry: str = "submission.py"
    module: str = "submission"
    functions: list[str] = Field(default_factory=list)   # required names: "missing function" explanations
    limits: LimitsOverride = Field(default_factory=LimitsOverride)
    test_timeout_s: float = Field(2.0, gt=0)   # per test (pytest) / per case (io), per call
    tests: list[TestRule] = Field(default_factory=list)   # pytest kind
    compare: CompareSpec = Field(default_factory=CompareSpec)  # io default
    feedback: FeedbackOptions = Field(default_factory=FeedbackOptions)
    hints: HintOptions = Field(default_factory=HintOptions)
    submission: SubmissionOptions = Field(default_factory=SubmissionOptions)
    image: ImageOptions = Field(default_factory=ImageOptions)            # image kind
    mutation: MutationOptions = Field(default_factory=MutationOptions)   # mutation kind
    skills: list[str] = Field(default_factory=list)   # default skills of every test (skills.toml ids)

    @model_validator(mode="after")
    def _mutation_entry(self) -> "AssignmentConfig":
        # The student submits tests: their main test file must be one pytest collects.
        if self.kind == "mutation" and not PurePosixPath(self.entry).name.startswith("test_"):
            raise ValueError("kind mutation: entry must name the student's test file (test_*.py)")
        return self

    @field_validator("skills")
    @classmethod
    def _skills(cls, v: list[str]) -> list[str]:
        return [valid_skill_id(s) for s in v]

    @field_validator("entry")
    @classmethod
    def _entry(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts or not v.endswith(".py") or "\x00" in v:
            raise ValueError("must be a relative .py file name inside the submission")
        return v

    @field_validator("module")
    @classmethod
    def _module(cls, v: str) -> str:
        if not _IDENT.match(v):
            raise ValueError("must be a Python identifier")
        return v

    @field_validator("functions")
    @classmethod
    def _functions(cls, v: list[str]) -> list[str]:
        bad = [n for n in v if not _IDENT.match(n)]
        if bad:
            raise ValueError(f"not identifiers: {bad}")
        return v


class Assignment(BaseModel):
    """A loaded assignment: config plus every file it needs, in memory."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str                       # as the payload names it (relative path under the root)
    root: Path
    config: AssignmentConfig
    tests: dict[str, bytes]         # tests/ (hidden), relative paths
    public_tests: dict[str, bytes] = Field(default_factory=dict)
    solution: dict[str, bytes] = Field(default_factory=dict)
    files: dict[str, bytes] = Field(default_factory=dict)   # runtime files for every sandbox
    cases: list[Case] = Field(default_factory=list)         # io kind
    image_cases: list[ImageCase] = Field(default_factory=list)   # image kind
    mutants: list[Mutant] = Field(default_factory=list)          # mutation kind
    description: str = ""
    samples: list[Path] = Field(default_factory=list)
    version: str = ""               # hash of config, tests, public tests, solution, files (set by load_assignment)

    @property
    def title(self) -> str:
        return self.config.title

    @property
    def max_points(self) -> float:
        return self.config.max_points

    def limits(self, settings: Settings) -> Limits:
        """The assignment's limits over the operator defaults, clamped by the ceilings."""
        base = settings.default_limits.model_dump()
        base.update(self.config.limits.model_dump(exclude_none=True))
        return settings.limits_for(Limits(**base))

    def _rule(self, nodeid: str) -> TestRule | None:
        """The first [[tests]] rule matching a pytest node id (`file.py::test_x[param]`)."""
        qualified = nodeid.split("/")[-1]
        with_params = qualified.split("::")[-1]
        bare = with_params.split("[")[0]
        for rule in self.config.tests:
            if any(fnmatch.fnmatchcase(n, rule.pattern) for n in (bare, with_params, qualified, nodeid)):
                return rule
        return None

    def rule_for(self, nodeid: str, public: bool = False) -> tuple[float, bool]:
        """(weight, visible) of a pytest test by its node id (`file.py::test_x[param]`)."""
        rule = self._rule(nodeid)
        if rule is None:
            return 1.0, public
        return rule.weight, (public if rule.visible is None else rule.visible)

    def test_skills(self, test: str) -> tuple[str, ...]:
        """Skills a test practises: a pytest node id, or an io case's name
        as its report names it; the assignment's default when it names none."""
        if self.config.kind == "io":
            for i, case in enumerate(self.cases):
                if self.case_name(i) == test and case.skills is not None:
                    return tuple(case.skills)
        else:
            rule = self._rule(test)
            if rule is not None and rule.skills is not None:
                return tuple(rule.skills)
        return tuple(self.config.skills)

    def declared_skills(self) -> tuple[str, ...]:
        """Every skill the assignment names, in first-mention order."""
        seen = dict.fromkeys(self.config.skills)
        for item in (*self.config.tests, *self.cases):
            seen.update(dict.fromkeys(item.skills or ()))
        return tuple(seen)

    def case_name(self, index: int) -> str:
        case = self.cases[index]
        return case.name or f"case {index + 1}"

    def version_hash(self) -> str:
        """What the attempt ledger records as the assignment's version: a
        change to the config, a test, the solution or a runtime file changes it."""
        h = hashlib.sha256(b"xgrader-assignment-1")
        parts = self.fingerprint_parts() + [(f"public_tests/{k}", self.public_tests[k]) for k in sorted(self.public_tests)]
        for name, data in parts:
            h.update(len(name).to_bytes(4, "big") + name.encode() + len(data).to_bytes(8, "big") + data)
        return h.hexdigest()[:16]

    def fingerprint_parts(self) -> list[tuple[str, bytes]]:
        """What expected values depend on (for the on-disk cache key)."""
        parts = [("config", self.config.model_dump_json().encode())]
        for prefix, files in (("tests", self.tests), ("solution", self.solution), ("files", self.files)):
            parts += [(f"{prefix}/{k}", files[k]) for k in sorted(files)]
        for m in self.mutants:
            parts += [(f"mutants/{m.name}/{k}", m.files[k]) for k in sorted(m.files)]
        return parts


def _where(exc: ValidationError) -> str:
    msgs = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        msgs.append(f"field {loc}: {err.get('msg', 'invalid')}")
    return "; ".join(msgs)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AssignmentError(f"{path}: file missing") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AssignmentError(f"{path}: not valid TOML ({exc})") from None


def _read_tree(folder: Path, budget: list[int]) -> dict[str, bytes]:
    """Regular files under `folder` by relative posix path; symlinks are refused
    (an assignment must not pull in files from elsewhere); caches are skipped."""
    out: dict[str, bytes] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part in ("__pycache__", ".pytest_cache") for part in rel.parts):
            continue
        if path.is_symlink():
            raise AssignmentError(f"{path}: symlinks are not allowed in an assignment folder")
        if not path.is_file():
            continue
        data = path.read_bytes()
        budget[0] -= len(data)
        if budget[0] < 0:
            raise AssignmentError(f"{folder}: assignment folder larger than {MAX_FOLDER_BYTES} bytes")
        out[rel.as_posix()] = data
    return out


def load_assignment(folder: Path, name: str) -> Assignment:
    """Read and validate one assignment folder. Raises AssignmentError naming
    the file and field at fault."""
    cfg_path = folder / CONFIG_FILE
    try:
        config = AssignmentConfig.model_validate(_read_toml(cfg_path))
    except ValidationError as exc:
        raise AssignmentError(f"{cfg_path}: {_where(exc)}") from None

    budget = [MAX_FOLDER_BYTES]
    tests = _read_tree(folder / "tests", budget)
    public = _read_tree(folder / "public_tests", budget)
    solution = _read_tree(folder / "solution", budget)
    files = _read_tree(folder / "files", budget)

    cases: list[Case] = []
    image_cases: list[ImageCase] = []
    mutants: list[Mutant] = []
    if config.kind == "image":
        image_cases = load_image_cases(folder, tests, solution, config.entry)
    elif config.kind == "mutation":
        # tests/ holds the author's model test suite (optional; `xgrader check` grades it).
        mutants = load_mutants(folder, solution, f"{config.module}.py", _read_tree, budget)
    elif config.kind == "io":
        cases_path = folder / "tests" / CASES_FILE
        raw = _read_toml(cases_path)
        unknown = set(raw) - {"case"}
        if unknown:
            raise AssignmentError(f"{cases_path}: unknown top-level keys {sorted(unknown)} (use [[case]] tables)")
        for i, item in enumerate(raw.get("case", [])):
            try:
                case = Case.model_validate(item)
            except ValidationError as exc:
                raise AssignmentError(f"{cases_path}: case {i + 1}: {_where(exc)}") from None
            mode = (case.compare or config.compare).mode
            if mode == "regex" and case.expected is None:
                raise AssignmentError(f"{cases_path}: case {i + 1}: field expected: regex mode needs a pattern")
            if mode == "regex":
                try:
                    re.compile(case.expected or "")
                except re.error as exc:
                    raise AssignmentError(f"{cases_path}: case {i + 1}: field expected: bad regex ({exc})") from None
            cases.append(case)
        if not cases:
            raise AssignmentError(f"{cases_path}: no [[case]] entries")
        if any(c.expected is None for c in cases) and config.entry not in solution:
            raise AssignmentError(
                f"{folder / 'solution'}: {config.entry} missing (needed to compute expected values)")
    else:
        if not any(PurePosixPath(n).name.startswith("test_") and n.endswith(".py") for n in tests):
            raise AssignmentError(f"{folder / 'tests'}: no test_*.py files for a pytest assignment")

    desc_path = folder / "description.md"
    description = desc_path.read_text(encoding="utf-8", errors="replace") if desc_path.is_file() else ""
    samples_dir = folder / "samples"
    samples = sorted(p for p in samples_dir.iterdir() if p.is_file()) if samples_dir.is_dir() else []
    loaded = Assignment(
        name=name, root=folder, config=config, tests=tests, public_tests=public,
        solution=solution, files=files, cases=cases, description=description, samples=samples,
        image_cases=image_cases, mutants=mutants,
    )
    return loaded.model_copy(update={"version": loaded.version_hash()})
