"""`xgrader init NAME --kind K`: the scaffold is a working assignment that
`xgrader check` passes as created, for every kind; each wrong sample loses
points with feedback that says why (a visible test or a signature)."""

from __future__ import annotations

import pytest

from xgrader import authoring
from xgrader.cli.init import KINDS
from xgrader.cli.main import main
from xgrader.config import Settings
from xgrader.grading import Grader
from xgrader.handlers.expected import ExpectedStore
from xgrader.report import Outcome


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_scaffold_passes_check(kind, tmp_path, monkeypatch, bwrap_backend, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "course"
    assert main(["init", "--handlers", str(root), "--kind", kind, f"week1/ex_{kind}"]) == 0
    out = capsys.readouterr().out
    assert f"xgrader check --handlers {root} week1/ex_{kind}" in out
    folder = root / "week1" / f"ex_{kind}"
    samples = sorted(p.name for p in (folder / "samples").iterdir())
    assert len(samples) == 3 and sum(s.startswith("correct") for s in samples) == 1, samples
    if kind == "notebook":
        assert all(s.endswith(".ipynb") for s in samples)
    assert not [p for p in root.rglob(".*")], "the staging folder was left behind"

    grader = Grader(Settings(handlers=root, sandbox="bwrap"), bwrap_backend, store=ExpectedStore(tmp_path / "exp"))
    result = authoring.check_assignment(grader, f"week1/ex_{kind}")
    assert result.ok, authoring.render_check(result)
    assert [s.ok for s in result.samples] == [True] * 4
    # The only warning: fewer than five wrong samples (the author adds more).
    assert [w for w in result.warnings if "recommended" not in w] == [], result.warnings
    for sample in (folder / "samples").iterdir():
        if sample.name.startswith("wrong"):
            report = grader.grade(authoring.request_for([sample], f"week1/ex_{kind}"))
            assert report.score < report.max_score and authoring.useful_feedback(report), sample.name
            assert report.outcome is not Outcome.error, sample.name
    # The CLI agrees, exit 0.
    assert main(["check", "--handlers", str(root), "--sandbox", "bwrap", f"week1/ex_{kind}"]) == 0


def test_existing_folder_and_bad_names_are_refused(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert main(["init", "--handlers", str(tmp_path), "taken"]) == 2
    assert "already exists" in capsys.readouterr().err
    for bad in ("../escape", "/abs", "a b", "x/../y", "", ".hidden", "a\\b"):
        assert main(["init", "--handlers", str(tmp_path), bad]) == 2, bad
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
