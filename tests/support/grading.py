"""Grading fixtures: temporary assignment folders and a grader on the real
bwrap backend (the `grader_factory` fixture)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable

import pytest

from xgrader.config import Settings
from xgrader.grading import Grader
from xgrader.handlers.expected import ExpectedStore
from xgrader.job import GradeRequest
from xgrader.report import GradeReport
from xgrader.backends import make_backend


def write_assignment(root: Path, name: str, files: dict[str, str]) -> Path:
    """Create root/name with the given relative files (dedented text)."""
    folder = root / name
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return folder


class GradingKit:
    """A Grader over a temporary handlers root, with helpers."""

    def __init__(self, root: Path, backend, cache: Path) -> None:
        self.root = root
        self.settings = Settings(handlers=root, sandbox=backend.name)
        self.backend = backend
        self.grader = Grader(self.settings, backend, store=ExpectedStore(cache))

    def add(self, name: str, files: dict[str, str]) -> Path:
        return write_assignment(self.root, name, files)

    def grade(self, name: str, code: str = "", files: dict[str, bytes] | None = None) -> GradeReport:
        request = GradeRequest(grader=name, student_response=textwrap.dedent(code),
                               files=files or {}, submission_id="t1")
        return self.grader.grade(request)


@pytest.fixture(scope="module")
def bwrap_backend():
    backend = make_backend(Settings(sandbox="bwrap"))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def kit(tmp_path_factory, bwrap_backend) -> GradingKit:
    root = tmp_path_factory.mktemp("handlers")
    cache = tmp_path_factory.mktemp("expected-cache")
    return GradingKit(root, bwrap_backend, cache)


@pytest.fixture
def make_kit(tmp_path_factory, bwrap_backend) -> Callable[[], GradingKit]:
    def build() -> GradingKit:
        return GradingKit(tmp_path_factory.mktemp("handlers"), bwrap_backend,
                          tmp_path_factory.mktemp("expected-cache"))
    return build
