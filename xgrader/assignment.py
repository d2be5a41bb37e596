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

import ast as ast_module
import functools
import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xgrader.errors import AssignmentError
from xgrader.tomlfile import read_toml, where
from xgrader.kind_config import ImageCase, ImageOptions, Mutant, MutationOptions, load_image_cases, load_mutants
from xgrader.mastery.catalog import valid_skill_id
from xgrader.backends.base import Limits

if TYPE_CHECKING:
    from xgrader.config import Settings
    from xgrader.source import Source

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
    weight and visibility. Patterns (`*` any run, `?` one character, brackets
    literal: they hold parameters) are tried against the
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


# Constructs a code signature's `uses` may name (besides `import:MODULE`).
USES = {"while", "for", "recursion", "global", "nonlocal", "eval", "exec", "lambda", "comprehension",
        "try", "class", "with", "yield", "assert", "break", "continue", "import", "print", "input", "open"}
MAX_PATTERN_CHARS = 500
FROM_LIBRARY = "(from the signatures library)"


class FeedbackSignature(_Strict):
    """[[feedback.signatures]]: instructor-written feedback for a known mistake.

    Test conditions (`test`, `exception`, `actual`, `output`) hold when some
    test that ran and failed meets every one given; hidden tests only offer
    `test` and `exception` (their values are never matched). Code conditions
    (`calls`, `uses`, `ast`) hold when the student's source matches every one
    given. A signature fires when all of its conditions hold. `use` takes a
    signature from the handlers root's `signatures/` library by name; the
    keys given here override the library's."""

    name: str | None = Field(None, max_length=100)     # criteria and the coverage report refer to it
    use: str | None = Field(None, max_length=100)      # a library signature (signatures/*.toml)
    title: str = Field(min_length=1, max_length=200)   # shown as the explanation's heading
    message: str = Field("", max_length=2000)          # how to fix it
    test: str | None = None        # pattern on the test name (* and ?), as [[tests]] rules match
    exception: str | None = None   # exception type name the student's code raised ("ZeroDivisionError")
    # How the test failed: "failed" (a wrong answer), "error" (the code raised), "timeout".
    status: Literal["failed", "error", "timeout"] | None = None
    # Only for tests no built-in explanation already explains (a fallback note).
    fallback: bool = False
    actual: str | None = None      # regex searched in the actual value/output of a visible test
    output: str | None = None      # regex searched in what the code printed during a visible test
    calls: list[str] = Field(default_factory=list, max_length=50)   # the source calls one of these
    uses: list[str] = Field(default_factory=list, max_length=50)    # the source uses each of these
    ast: str | None = Field(None, max_length=MAX_PATTERN_CHARS)     # a code pattern (`_` any, `...` any run)
    add: float = Field(0.0, ge=0)          # points added when it fires
    deduct: float = Field(0.0, ge=0)       # points taken off when it fires
    cap: float | str | None = None         # the score is at most this: points, or "50%" of the maximum

    @field_validator("actual", "output")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)  # a bad pattern fails at load, naming the field
            except re.error as exc:
                raise ValueError(f"bad regex: {exc}") from None
        return v

    @field_validator("uses")
    @classmethod
    def _uses(cls, v: list[str]) -> list[str]:
        bad = [u for u in v if u not in USES and not re.fullmatch(r"import:[A-Za-z_][\w.]*", u)]
        if bad:
            raise ValueError(f"unknown constructs {bad} (known: {', '.join(sorted(USES))}, import:MODULE)")
        return v

    @field_validator("ast")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            compile_pattern(v)   # raises ValueError naming what is wrong
        return v

    @field_validator("cap")
    @classmethod
    def _cap(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, str):
            if not re.fullmatch(r"\d+(\.\d+)?%", v.strip()) or float(v.strip()[:-1]) > 100:
                raise ValueError("a cap is points (a number) or a percentage like \"50%\"")
            return v.strip()
        if v is not None and v < 0:
            raise ValueError("a cap must not be negative")
        return v

    @model_validator(mode="before")
    @classmethod
    def _from_library(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("use") is not None and "title" not in data:
            return {**data, "title": FROM_LIBRARY}   # the library's title replaces it at load
        return data

    @model_validator(mode="after")
    def _some_condition(self) -> "FeedbackSignature":
        if self.use is not None:
            return self   # completed from the library at load
        if not any((self.test, self.exception, self.actual, self.output, self.status, self.calls, self.uses,
                    self.ast)):
            raise ValueError("a signature needs at least one of test, exception, status, actual, output, "
                             "calls, uses, ast")
        return self

    @property
    def key(self) -> str:
        """How criteria, the report and the coverage checker name it."""
        return self.name or self.title

    @property
    def on_code(self) -> bool:
        return bool(self.calls or self.uses or self.ast)

    @property
    def on_tests(self) -> bool:
        return bool(self.test or self.exception or self.actual or self.output or self.status)

    def cap_points(self, max_points: float) -> float | None:
        if self.cap is None:
            return None
        if isinstance(self.cap, str):
            return max_points * float(self.cap[:-1]) / 100
        return float(self.cap)


def compile_pattern(text: str) -> "ast_module.AST":
    """A code pattern's AST: an expression (`range(len(_))`) or one statement
    (`for _ in range(len(_)): ...`). `_` matches any expression or name,
    `...` any run of statements or arguments."""
    for mode in ("eval", "exec"):
        try:
            tree = ast_module.parse(text, mode=mode)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        if mode == "eval":
            return tree.body
        if len(tree.body) == 1:
            return tree.body[0]
        raise ValueError("a code pattern is one expression or one statement")
    raise ValueError("a code pattern must be valid Python (use _ for any expression, ... for any statements)")


class Criterion(_Strict):
    """[[criteria]]: one line of the rubric. Its points are earned in
    proportion to the weight of its tests that pass (all of them when it has
    no tests), then its signatures' marks apply within it."""

    title: str = Field(min_length=1, max_length=200)
    points: float = Field(gt=0)
    tests: list[str] = Field(default_factory=list)        # patterns, as [[tests]] rules (io: case names)
    signatures: list[str] = Field(default_factory=list)   # names: built-in explanations or [[feedback.signatures]]


class FeedbackOptions(_Strict):
    show_output: bool = True          # visible tests show what the student's code printed
    max_chars: int = Field(2000, ge=100)  # per field (output, actual, message)
    show_traceback: bool = True
    # Built-in explanations (xgrader.explain): on unless switched off here,
    # all (`explain = false`) or some by name (`explain_skip = ["mutated_argument"]`).
    explain: bool = True
    explain_skip: list[str] = Field(default_factory=list)
    signatures: list[FeedbackSignature] = Field(default_factory=list)
    show_skills: bool = False         # a "Skills practised: ..." line (titles from skills.toml)

    @field_validator("explain_skip")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from xgrader.explain import BUILTINS
        bad = [n for n in v if n not in BUILTINS]
        if bad:
            raise ValueError(f"unknown built-in explanations {bad} (known: {', '.join(sorted(BUILTINS))})")
        return v


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
    # Instructor set-up code run in the student's module before their code,
    # from its own file (their line numbers stay theirs). Not secret: it runs
    # in the student's sandbox.
    prelude: str | None = None
    criteria: list[Criterion] = Field(default_factory=list)

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

    @field_validator("prelude")
    @classmethod
    def _prelude(cls, v: str | None) -> str | None:
        if v is not None:
            p = PurePosixPath(v)
            if p.is_absolute() or ".." in p.parts or not v.endswith(".py") or "\x00" in v or "/" in v:
                raise ValueError("must be a .py file name in the assignment folder")
        return v

    @model_validator(mode="after")
    def _criteria_points(self) -> "AssignmentConfig":
        if self.criteria and "max_points" in self.model_fields_set:
            total = sum(c.points for c in self.criteria)
            if abs(total - self.max_points) > 1e-9:
                raise ValueError(f"max_points ({self.max_points:g}) differs from the criteria's points "
                                 f"({total:g}); leave max_points out when criteria are given")
        return self

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
    prelude: dict[str, bytes] = Field(default_factory=dict)   # {file name: source}, at most one
    version: str = ""               # hash of config, tests, public tests, solution, files (set by load_assignment)

    @property
    def title(self) -> str:
        return self.config.title

    @property
    def max_points(self) -> float:
        if self.config.criteria:
            return sum(c.points for c in self.config.criteria)
        return self.config.max_points

    @functools.cached_property
    def public_words(self) -> frozenset[str]:
        """Lower-case words the student is shown (description, visible cases,
        public tests, function names): not secret when they occur in a hidden test."""
        parts = [self.description, self.title, *self.config.functions]
        parts += [d.decode("utf-8", "replace") for d in self.public_tests.values()]
        for case in self.cases:
            if case.visible:
                parts += [case.name, case.expr or "", case.stdin or "", case.expected or ""]
        return frozenset(w.lower() for w in re.findall(r"[A-Za-z_]\w*", "\n".join(parts)))

    @functools.cached_property
    def hidden_literals(self) -> frozenset[str]:
        """Numbers and words written in the hidden pytest files (what a hidden test may hold)."""
        from xgrader.explain import atoms_of_text

        atoms: set[str] = set()
        for name, data in self.tests.items():
            if name.endswith(".py"):
                text = data.decode("utf-8", "replace")
                try:
                    tree = ast_module.parse(text)
                except (SyntaxError, ValueError, RecursionError, MemoryError):
                    continue
                for node in ast_module.walk(tree):
                    if isinstance(node, ast_module.Constant) and isinstance(node.value, (int, float, str)) \
                            and not isinstance(node.value, bool):
                        atoms |= atoms_of_text(repr(node.value) if not isinstance(node.value, str) else node.value,
                                               literal=isinstance(node.value, str))
        return frozenset(atoms)

    def explains(self, name: str) -> bool:
        """Is the built-in explanation `name` (xgrader.explain.BUILTINS) on?"""
        fb = self.config.feedback
        return fb.explain and name not in fb.explain_skip

    @functools.cached_property
    def prelude_source(self) -> "Source | None":
        """The prelude as a Source (its names and words are not secret)."""
        if not self.prelude:
            return None
        from xgrader.source import Source
        return Source.of(self.prelude, next(iter(self.prelude)))

    @property
    def prelude_name(self) -> str | None:
        return next(iter(self.prelude), None)

    def sandbox_files(self, files: dict[str, bytes]) -> dict[str, bytes]:
        """What a student sandbox holds: runtime files, the submission, the prelude."""
        return {**self.files, **files, **self.prelude}

    def test_names(self, test_id: str) -> tuple[str, ...]:
        """The forms a rule pattern is tried against: `test_x`, `test_x[7-True]`,
        `test_primes.py::test_x[7-True]`, the full node id (an io case: its name)."""
        qualified = test_id.split("/")[-1]
        with_params = qualified.split("::")[-1]
        bare = with_params.split("[")[0]
        return (bare, with_params, qualified, test_id)

    def in_rule(self, test_id: str, pattern: str) -> bool:
        return any(name_matches(n, pattern) for n in self.test_names(test_id))

    def limits(self, settings: Settings) -> Limits:
        """The assignment's limits over the operator defaults, clamped by the ceilings."""
        base = settings.default_limits.model_dump()
        base.update(self.config.limits.model_dump(exclude_none=True))
        return settings.limits_for(Limits(**base))

    def _rule(self, nodeid: str) -> TestRule | None:
        """The first [[tests]] rule matching a pytest node id (`file.py::test_x[param]`),
        remembered: every submission asks again for the same tests."""
        memo = self.rule_memo
        if nodeid in memo:
            return memo[nodeid]
        found = next((rule for rule in self.config.tests if self.in_rule(nodeid, rule.pattern)), None)
        if len(memo) < 10_000:
            memo[nodeid] = found
        return found

    @functools.cached_property
    def rule_memo(self) -> dict[str, TestRule | None]:
        return {}

    def rule_for(self, nodeid: str, public: bool = False) -> tuple[float, bool]:
        """(weight, visible) of a pytest test by its node id (`file.py::test_x[param]`)."""
        rule = self._rule(nodeid)
        if rule is None:
            return 1.0, public
        return rule.weight, (public if rule.visible is None else rule.visible)

    def test_skills(self, test: str) -> tuple[str, ...]:
        """Skills a test practises, by its identity (a pytest node id, an io
        case's name); the assignment's default when it names none."""
        if self.config.kind == "io":
            for i, case in enumerate(self.cases):
                if self.case_name(i) == test and case.skills is not None:
                    return tuple(case.skills)
        else:
            rule = self._rule(test)
            if rule is not None and rule.skills is not None:
                return tuple(rule.skills)
        return tuple(self.config.skills)

    @property
    def handlers_root(self) -> Path:
        """The handlers root this assignment was loaded from (`week1/primes` -> two levels up)."""
        return self.root.parents[len(PurePosixPath(self.name).parts) - 1]

    def declared_skills(self) -> tuple[str, ...]:
        """Every skill the assignment names, in first-mention order."""
        seen = dict.fromkeys(self.config.skills)
        for item in (*self.config.tests, *self.cases):
            seen.update(dict.fromkeys(item.skills or ()))
        return tuple(seen)

    def all_hidden(self) -> "Assignment":
        """This assignment with every test hidden (public tests and visible
        cases too): what students would see in the usual setting of a course.
        `xgrader coverage --all-hidden` measures feedback this way."""
        rules = [r.model_copy(update={"visible": False}) for r in self.config.tests]
        rules.append(TestRule(pattern="*", visible=False))
        config = self.config.model_copy(update={"tests": rules})
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        fields.update(config=config, cases=[c.model_copy(update={"visible": False}) for c in self.cases])
        return Assignment(**fields)

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
        for prefix, files in (("tests", self.tests), ("solution", self.solution), ("files", self.files),
                              ("prelude", self.prelude)):
            parts += [(f"{prefix}/{k}", files[k]) for k in sorted(files)]
        for m in self.mutants:
            parts += [(f"mutants/{m.name}/{k}", m.files[k]) for k in sorted(m.files)]
        return parts


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    """fnmatch's `*` and `?`, with `[` and `]` literal (they hold test parameters)."""
    parts = []
    for ch in pattern:
        parts.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def name_matches(name: str, pattern: str) -> bool:
    """A test name against a `[[tests]]` rule's or a signature's pattern:
    `*` any run, `?` one character, everything else literal
    (`test_small[7-*]` matches `test_small[7-True]`)."""
    return _glob(pattern).fullmatch(name) is not None


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


LIBRARY_DIR = "signatures"


def load_library(folder: Path | None) -> dict[str, dict[str, Any]]:
    """The shared signatures of a handlers root: `signatures/*.toml`, each with
    `[[signature]]` tables that have a `name`. Raw tables by name (validated
    once merged into an assignment's `use`)."""
    out: dict[str, dict[str, Any]] = {}
    if folder is None or not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.toml")):
        if path.is_symlink():
            raise AssignmentError(f"{path}: symlinks are not allowed in the signatures library")
        raw = read_toml(path)
        unknown = set(raw) - {"signature"}
        if unknown:
            raise AssignmentError(f"{path}: unknown top-level keys {sorted(unknown)} (use [[signature]] tables)")
        for i, item in enumerate(raw.get("signature", [])):
            sig_name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(sig_name, str) or not sig_name:
                raise AssignmentError(f"{path}: signature {i + 1}: field name: required")
            if sig_name in out:
                raise AssignmentError(f"{path}: signature {sig_name!r} defined twice in the library")
            if "use" in item:
                raise AssignmentError(f"{path}: signature {sig_name!r}: field use: not allowed in the library")
            try:
                FeedbackSignature.model_validate(item)
            except ValidationError as exc:
                raise AssignmentError(f"{path}: signature {sig_name!r}: {where(exc)}") from None
            out[sig_name] = dict(item)
    return out


def _resolve_signatures(config: AssignmentConfig, library: dict[str, dict[str, Any]], cfg_path: Path,
                        lib_dir: Path | None) -> AssignmentConfig:
    """`use = "name"` entries completed from the library; names unique; criteria name known signatures."""
    from xgrader.explain import BUILTINS

    resolved = []
    for i, sig in enumerate(config.feedback.signatures):
        if sig.use is not None:
            base = library.get(sig.use)
            if base is None:
                raise AssignmentError(f"{cfg_path}: field feedback.signatures.{i}.use: no signature "
                                      f"{sig.use!r} in {lib_dir or 'the signatures library'}")
            own = {k: getattr(sig, k) for k in sig.model_fields_set if k != "use"}
            if own.get("title") == FROM_LIBRARY:
                del own["title"]
            merged = {**base, **own}
            try:
                sig = FeedbackSignature.model_validate(merged)
            except ValidationError as exc:
                raise AssignmentError(f"{cfg_path}: feedback.signatures.{i} (use {sig.use!r}): {where(exc)}") from None
        resolved.append(sig)
    keys = [s.key for s in resolved]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise AssignmentError(f"{cfg_path}: field feedback.signatures: names used twice {dupes} (give each a `name`)")
    known = set(keys) | set(BUILTINS)
    for i, crit in enumerate(config.criteria):
        bad = [n for n in crit.signatures if n not in known]
        if bad:
            raise AssignmentError(f"{cfg_path}: field criteria.{i}.signatures: unknown signatures {bad}")
    feedback = config.feedback.model_copy(update={"signatures": resolved})
    return config.model_copy(update={"feedback": feedback})


def _notebook_solution(solution: dict[str, bytes], entry: str, folder: Path) -> dict[str, bytes]:
    """A reference solution may be a notebook: the one solution/*.ipynb becomes
    the entry module, converted as a student's notebook is."""
    notebooks = [n for n in solution if n.endswith(".ipynb")]
    if entry in solution or len(notebooks) != 1:
        return solution
    from xgrader.errors import SubmissionError
    from xgrader.submissions import notebook_files

    try:
        module, written = notebook_files(solution[notebooks[0]], notebooks[0])
    except SubmissionError as exc:
        raise AssignmentError(f"{folder / 'solution' / notebooks[0]}: {exc}") from None
    out = {k: v for k, v in solution.items() if k != notebooks[0]}
    out.update(written)
    out[entry] = module
    return out


def load_assignment(folder: Path, name: str, library_dir: Path | None = None) -> Assignment:
    """Read and validate one assignment folder. Raises AssignmentError naming
    the file and field at fault. `library_dir`: the handlers root's shared
    `signatures/` folder, for `use = "name"` signatures."""
    cfg_path = folder / CONFIG_FILE
    try:
        config = AssignmentConfig.model_validate(read_toml(cfg_path))
    except ValidationError as exc:
        raise AssignmentError(f"{cfg_path}: {where(exc)}") from None
    config = _resolve_signatures(config, load_library(library_dir), cfg_path, library_dir)

    budget = [MAX_FOLDER_BYTES]
    tests = _read_tree(folder / "tests", budget)
    public = _read_tree(folder / "public_tests", budget)
    solution = _notebook_solution(_read_tree(folder / "solution", budget), config.entry, folder)
    files = _read_tree(folder / "files", budget)
    prelude: dict[str, bytes] = {}
    if config.prelude:
        path = folder / config.prelude
        if path.is_symlink() or not path.is_file():
            raise AssignmentError(f"{cfg_path}: field prelude: {path} is not a file in the assignment folder")
        prelude[config.prelude] = path.read_bytes()

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
        raw = read_toml(cases_path)
        unknown = set(raw) - {"case"}
        if unknown:
            raise AssignmentError(f"{cases_path}: unknown top-level keys {sorted(unknown)} (use [[case]] tables)")
        for i, item in enumerate(raw.get("case", [])):
            try:
                case = Case.model_validate(item)
            except ValidationError as exc:
                raise AssignmentError(f"{cases_path}: case {i + 1}: {where(exc)}") from None
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
        image_cases=image_cases, mutants=mutants, prelude=prelude,
    )
    return loaded.model_copy(update={"version": loaded.version_hash()})
