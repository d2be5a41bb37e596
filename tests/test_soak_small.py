"""The chaos soak, CI size: about 300 submissions through the bundled queue
and a fault-injecting proxy to 2 `xgrader run` replicas on the real bwrap
backend, one replica SIGKILLed and restarted, the queue server restarted once,
a slow and sometimes failing LMS callback (bench/soak.py runs the full size)."""

from __future__ import annotations

import pytest

from bench import soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_small_soak_every_submission_answered_once_with_its_own_score(tmp_path):
    lines: list[str] = []
    summary = soak.run(submissions=300, replicas=2, kills=1, kill_every=(8, 15), queue_restarts=1,
                       timeout=420, seed=7, workdir=tmp_path / "soak", log=lines.append)
    print("\n".join(lines))
    print(summary.table())
    # The chaos really happened (otherwise the checks below prove nothing).
    assert summary.kills == 1
    assert summary.queue_restarts == 1
    assert summary.proxy.get("reset", 0) + summary.proxy.get("error", 0) > 0, summary.proxy
    assert summary.callbacks_refused > 0
    # What must hold under it.
    assert summary.submissions == 300
    assert summary.missing == []
    assert summary.duplicated == []
    assert summary.wrong_score == []
    assert summary.leftovers == []
    assert summary.log_errors == []
    assert summary.delivered_once == 300
    assert summary.ok
