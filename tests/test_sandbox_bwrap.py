"""bwrap-specific properties: identity, seccomp, env, file ownership."""

import os

import pytest

from xgrader.config import Settings
from xgrader.sandbox.base import Limits, SandboxJob, Verdict
from xgrader.sandbox.bwrap import BwrapBackend


@pytest.fixture(scope="module")
def bw():
    return BwrapBackend(Settings(sandbox="bwrap"))


def run(bw, src, **kw):
    return bw.run(SandboxJob(argv=["python3", "-I", "-S", "x.py"], files={"x.py": src.encode()}, **kw))


def test_runs_as_nobody_without_secrets(bw, monkeypatch):
    monkeypatch.setenv("XGRADER_QUEUE_PASSWORD", "CANARY-bwrap-7731")
    r = run(bw, "import os\nprint(os.getuid(), os.getgid())\n"
                "import glob\n"
                "for p in glob.glob('/proc/*/environ'):\n"
                "    try: print(open(p,'rb').read())\n"
                "    except OSError as e: print('ERR', p)\n"
                "print(dict(os.environ))\n")
    assert r.verdict == Verdict.ok, r
    assert "CANARY" not in r.stdout + r.stderr
    assert r.stdout.split()[0] != "0"


def test_seccomp_denies_unshare_and_ptrace(bw):
    src = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "for name, args in [('unshare', (0x10000000,)), ('unshare', (0x40000000,)), ('ptrace', (0, 0, 0, 0)), ('chroot', (b'/tmp',))]:\n"
           "    rc = getattr(libc, name)(*args); print(name, rc, ctypes.get_errno())\n")
    r = run(bw, src)
    lines = [l.split() for l in r.stdout.splitlines()]
    assert len(lines) == 4, r
    for name, rc, err in lines:
        assert rc == "-1" and int(err) == 1, (name, rc, err)


def test_filesystem_readonly_and_tmp_capped(bw):
    src = ("import os\nfor p in ['/usr/x', '/etc/x', '/opt/xgrader/x', '/x', '/dev/x']:\n"
           "    try: open(p, 'w'); print('WROTE', p)\n    except OSError as e: print('denied', p)\n"
           "try:\n    f = open('/tmp/big', 'wb')\n    for _ in range(100): f.write(b'x' * 1024 * 1024); f.flush()\n"
           "    print('FILLED')\nexcept OSError as e: print('full', e.errno)\n")
    r = run(bw, src, limits=Limits(tmp_mb=4, file_mb=64))
    assert "WROTE" not in r.stdout and "FILLED" not in r.stdout, r
    assert "full 28" in r.stdout  # ENOSPC from the size-capped tmpfs
