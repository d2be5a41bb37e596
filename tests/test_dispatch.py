"""dispatch: grader names -> assignment folders, safely; assignment.toml validation."""

from __future__ import annotations

import os
import time

import pytest

from tests.support.grading import write_assignment
from xgrader.assignment import LIBRARY_DIR
from xgrader.dispatch import AssignmentRegistry, assignment_dir, resolve
from xgrader.errors import AssignmentError

IO_OK = {
    "assignment.toml": 'title = "Add"\nkind = "io"\nmax_points = 2\n',
    "tests/cases.toml": '[[case]]\nexpr = "add(1, 2)"\nexpected = "3"\n',
    "solution/submission.py": "def add(a, b):\n    return a + b\n",
}


@pytest.fixture
def root(tmp_path):
    handlers = tmp_path / "handlers"
    write_assignment(handlers, "add", IO_OK)
    write_assignment(handlers, "week1/add", IO_OK)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "assignment.toml").write_text('title = "x"\nkind = "io"\n')
    return handlers


def test_resolves_plain_and_nested_names(root):
    assert resolve(root, "add").config.title == "Add"
    assert resolve(root, "week1/add").name == "week1/add"
    assert resolve(root, " add ").name == "add"


@pytest.mark.parametrize("name, words", [
    ("../../etc/passwd", "'..'"),
    ("../outside", "'..'"),
    ("week1/../add", "'..'"),
    ("/etc", "relative"),
    ("/etc/passwd", "relative"),
    ("~root", "relative"),
    ("add\x00", "not allowed"),
    ("add\nx", "not allowed"),
    ("a\\b", "backslash"),
    ("", "names no assignment"),
    ("nope", "unknown assignment"),
    ("week1", "unknown assignment"),
    ("./add", "'.'"),
    ("x" * 300, "not allowed"),
])
def test_rejects_bad_names(root, name, words):
    with pytest.raises(AssignmentError, match=words):
        resolve(root, name)


def test_symlink_leaving_the_root_is_rejected(root, tmp_path):
    os.symlink(tmp_path / "outside", root / "escape")
    with pytest.raises(AssignmentError, match="outside the handlers folder"):
        resolve(root, "escape")
    # A symlinked parent folder escaping the root too.
    os.symlink(tmp_path, root / "up")
    with pytest.raises(AssignmentError, match="outside the handlers folder"):
        assignment_dir(root, "up/outside")


def test_symlink_inside_the_root_is_fine_but_symlinks_in_assignments_are_not(root):
    os.symlink(root / "add", root / "alias")
    assert resolve(root, "alias").config.title == "Add"
    os.symlink("/etc/passwd", root / "add" / "tests" / "passwd")
    with pytest.raises(AssignmentError, match="symlinks are not allowed"):
        resolve(root, "add")


@pytest.mark.parametrize("toml, field", [
    ('title = "x"\nkind = "io"\nmax_points = 0\n', "max_points"),
    ('title = "x"\nkind = "shell"\n', "kind"),
    ('kind = "io"\n', "title"),
    ('title = "x"\nkind = "io"\nbogus = 1\n', "bogus"),
    ('title = "x"\nkind = "io"\nentry = "../x.py"\n', "entry"),
    ('title = "x"\nkind = "io"\nmodule = "a-b"\n', "module"),
    ('title = "x"\nkind = "io"\n[limits]\nmemory_mb = 1\n', "limits.memory_mb"),
    ('title = "x"\nkind = "io"\n[[tests]]\nweight = 1\n', "tests.0.pattern"),
    ('title = \n', "not valid TOML"),
])
def test_config_errors_name_file_and_field(tmp_path, toml, field):
    write_assignment(tmp_path, "bad", {**IO_OK, "assignment.toml": toml})
    with pytest.raises(AssignmentError) as info:
        resolve(tmp_path, "bad")
    assert "bad/assignment.toml" in str(info.value)
    assert field in str(info.value)


@pytest.mark.parametrize("cases, words", [
    ('[[case]]\nexpr = "f()"\nstdin = "x"\n', "exactly one of"),
    ('[[case]]\nname = "n"\n', "exactly one of"),
    ('[[case]]\nexpr = "f()"\ncompare = { mode = "regex" }\n', "regex mode needs a pattern"),
    ('[[case]]\nexpr = "f()"\nexpected = "("\ncompare = { mode = "regex" }\n', "bad regex"),
    ('[[cases]]\nexpr = "f()"\n', "unknown top-level keys"),
    ('', "no [[case]] entries"),
])
def test_case_errors(tmp_path, cases, words):
    write_assignment(tmp_path, "bad", {**IO_OK, "tests/cases.toml": cases})
    with pytest.raises(AssignmentError, match=words.replace("[", r"\[").replace("(", r"\(")) as info:
        resolve(tmp_path, "bad")
    assert "cases.toml" in str(info.value)


def test_pytest_kind_needs_test_files(tmp_path):
    write_assignment(tmp_path, "p", {"assignment.toml": 'title = "p"\nkind = "pytest"\n',
                                     "tests/helper.py": "x = 1\n"})
    with pytest.raises(AssignmentError, match="no test_"):
        resolve(tmp_path, "p")


def test_limits_are_clamped_by_operator_ceilings(tmp_path):
    from xgrader.config import Settings
    write_assignment(tmp_path, "big", {**IO_OK, "assignment.toml":
                                       'title = "x"\nkind = "io"\n[limits]\nmemory_mb = 99999\ncpu_s = 1\n'})
    limits = resolve(tmp_path, "big").limits(Settings())
    assert limits.memory_mb == Settings().limit_ceilings.memory_mb
    assert limits.cpu_s == 1
    assert limits.wall_s == Settings().default_limits.wall_s


def test_rules_pick_weight_and_visibility(tmp_path):
    write_assignment(tmp_path, "p", {
        "assignment.toml": 'title = "p"\nkind = "pytest"\n[[tests]]\npattern = "test_small"\nweight = 3\n'
                           'visible = true\n[[tests]]\npattern = "test_p.py::test_big*"\nweight = 5\n',
        "tests/test_p.py": "def test_small(): pass\n"})
    a = resolve(tmp_path, "p")
    assert a.rule_for("tests/test_p.py::test_small[1-2]") == (3, True)
    assert a.rule_for("tests/test_p.py::test_big") == (5, False)
    assert a.rule_for("tests/test_p.py::test_other") == (1.0, False)
    assert a.rule_for("public_tests/test_q.py::test_other", public=True) == (1.0, True)


def test_registry_caches_until_a_file_changes(root):
    registry = AssignmentRegistry(root)
    first = registry.get("add")
    assert registry.get("add") is first
    cfg = root / "add" / "assignment.toml"
    cfg.write_text(cfg.read_text().replace('"Add"', '"Addition"'))
    later = time.time() + 5
    os.utime(cfg, (later, later))
    second = registry.get("add")
    assert second is not first and second.config.title == "Addition"
    assert sorted(registry.names()) == ["add", "week1/add"]


def test_registry_sees_files_added_removed_or_written_without_a_newer_mtime(root):
    registry = AssignmentRegistry(root)
    first = registry.get("add")
    folder = root / "add"
    # A file written with an older mtime (a copy that keeps timestamps): its mtime changed all the same.
    cfg = folder / "assignment.toml"
    cfg.write_text(cfg.read_text().replace('"Add"', '"Sum"'))
    os.utime(cfg, (1_000_000, 1_000_000))
    second = registry.get("add")
    assert second is not first and second.config.title == "Sum"
    assert registry.get("add") is second                       # nothing changed since: cached
    # A file added in a subfolder: that folder's mtime changes.
    (folder / "data").mkdir()
    assert registry.get("add") is not second
    third = registry.get("add")
    (folder / "data" / "input.txt").write_text("1 2\n")
    assert registry.get("add") is not third


def test_registry_sees_the_signatures_library_appear(root):
    registry = AssignmentRegistry(root)
    first = registry.get("add")
    assert registry.get("add") is first
    (root / LIBRARY_DIR).mkdir()
    (root / LIBRARY_DIR / "common.toml").write_text("")
    assert registry.get("add") is not first
