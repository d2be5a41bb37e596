"""Secrets (threat model): the daemon's environment, its config file, hidden
tests and the reference solution are nowhere the student's code can look."""

from tests.attacks.conftest import CANARIES, leaks
from tests.attacks.support import attack


def test_environment(sandbox):
    r = attack(sandbox, "import os\nprint(dict(os.environ))\nprint(os.environb)\n")
    assert "XGRADER_QUEUE_PASSWORD" not in r.stdout and "API_KEY" not in r.stdout, r
    assert not leaks(r.stdout, r.stderr)


def test_proc_environ_and_cmdline_of_every_process(sandbox):
    src = ("import glob\nfor p in sorted(glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline')"
           " + glob.glob('/proc/*/task/*/environ')):\n"
           "    try: print(p, open(p, 'rb').read())\n    except OSError as e: print(p, 'denied', e.errno)\n")
    r = attack(sandbox, src, output_bytes=1_000_000)
    assert "/proc/1/environ" in r.stdout, r  # pid 1 (the sandbox's init) was readable and looked at
    assert not leaks(r.stdout, r.stderr) and "XGRADER_" not in r.stdout.replace("XGRADER_CHANNEL", ""), r


def test_config_file_and_secret_files_are_not_mounted(sandbox, config_file):
    src = (f"import os\ntry: print(open({str(config_file)!r}).read())\nexcept OSError as e: print('no config', e.errno)\n"
           "for p in ['/run/secrets', '/etc/xgrader', '/var/run/secrets', '/root/.config']:\n"
           "    print(p, os.path.exists(p))\n")
    r = attack(sandbox, src)
    assert "no config" in r.stdout and "True" not in r.stdout, r
    assert not leaks(r.stdout, r.stderr)


def test_canaries_nowhere_on_the_visible_filesystem(sandbox):
    """Scan every readable file outside /usr (and its /bin, /lib links), /proc, /sys, /dev for any canary."""
    # Reversed, so the attack's own source file does not match.
    needles = [c[::-1].encode() for c in CANARIES]
    src = (f"import os\nneedles = [n[::-1] for n in {needles!r}]\nfound = []\nread = set()\n"
           "for top in [d for d in os.listdir('/') if d not in ('usr', 'proc', 'sys', 'dev') and not os.path.islink('/' + d)]:\n"
           "    for root, dirs, files in os.walk('/' + top):\n"
           "        for f in files:\n"
           "            p = os.path.join(root, f)\n"
           "            try:\n                data = open(p, 'rb').read(2_000_000)\n            except OSError:\n                continue\n"
           "            read.add(p)\n"
           "            if any(n in data for n in needles): found.append(p)\n"
           "print('scanned', len(read), 'found', len(found), [x.replace('_', '-') for x in found])\n"
           "print('reached', sorted(p for p in read if p in ('/tmp/work/x.py', '/opt/xgrader/runner.py')))\n")
    r = attack(sandbox, src, wall_s=10, cpu_s=8)
    scan, reached = r.stdout.splitlines()[:2]
    words = scan.split()
    assert words[:1] == ["scanned"] and words[3] == "0", r
    # The walk really read files, among them the job's own folder and the
    # runner's mount: the places a leak into the sandbox would land.
    assert int(words[1]) >= 5, r
    assert reached == "reached ['/opt/xgrader/runner.py', '/tmp/work/x.py']", r


def test_canaries_not_in_sandbox_memory_of_other_processes(sandbox):
    """/proc/*/mem of every other process visible (the sandbox's own init included)."""
    needles = [c[::-1].encode() for c in CANARIES]
    # A child of its own too: a fork-server job's init (its only other process)
    # is not dumpable, so unreadable; the child proves the reading works.
    # Forked before the needles exist: its memory holds them reversed only.
    src = ("import os, time\nchild = os.fork()\nif child == 0:\n    time.sleep(60)\n    os._exit(0)\n"
           f"needles = [n[::-1] for n in {needles!r}]\nhits = 0\nscanned = 0\nreadable = set()\n"
           "for pid in [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:\n"
           "    try:\n        maps = open(f'/proc/{pid}/maps').read().splitlines()\n        mem = open(f'/proc/{pid}/mem', 'rb')\n"
           "    except OSError:\n        continue\n"
           "    for line in maps:\n        lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
           "        if 'r' not in line.split()[1] or hi - lo > 64 * 2**20: continue\n"
           "        try:\n            mem.seek(lo); data = mem.read(hi - lo)\n        except (OSError, ValueError, OverflowError):\n            continue\n"
           "        scanned += len(data)\n        hits += sum(n in data for n in needles)\n"
           "        readable.add(pid)\n"
           "print('hits', hits, scanned, len(readable))\nos.kill(child, 9)\n")
    r = attack(sandbox, src, wall_s=20, cpu_s=15)
    words = r.stdout.split()
    assert words[:2] == ["hits", "0"], r
    # It really read memory: of one process at least (the sandbox's init: bwrap's pid 1, the engine's
    # init; or the attack's own child).
    assert int(words[3]) >= 1 and int(words[2]) > 100_000, r
