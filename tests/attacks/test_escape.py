"""Escaping the box (threat model): every attempt is denied and has no effect
outside the sandbox."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.attacks.conftest import ASSIGNMENTS, leaks
from tests.attacks.support import attack, lines

REPO = Path(__file__).resolve().parents[2]

PROBE_WRITE = """
import os
for p in {paths!r}:
    try:
        with open(p, 'w') as f: f.write('owned')
        print('WROTE', p)
    except OSError as e:
        print('denied', p, e.errno)
"""


def test_write_outside_tmp(sandbox, tmp_path):
    host_file = REPO / "pyproject.toml"
    before = host_file.read_bytes()
    paths = ["/x", "/usr/x", "/etc/passwd", "/etc/x", "/opt/xgrader/runner.py", "/home/x", "/root/x",
             "/var/x", str(host_file), "/proc/sys/kernel/hostname", "/sys/x", "/proc/sysrq-trigger"]
    r = attack(sandbox, PROBE_WRITE.format(paths=paths))
    assert "WROTE" not in r.stdout and r.stdout.count("denied") == len(paths), r
    assert host_file.read_bytes() == before
    assert not Path("/x").exists()


def test_write_to_dev(sandbox):
    src = PROBE_WRITE.format(paths=["/dev/x", "/dev/sda", "/dev/mem", "/dev/kmsg"]) + (
        "import os, stat\ntry: os.mknod('/tmp/dev', stat.S_IFCHR | 0o600, os.makedev(1, 1)); print('MKNOD')\n"
        "except OSError as e: print('denied mknod', e.errno)\n"
        "print('devices', sorted(os.listdir('/dev')))\n")
    r = attack(sandbox, src)
    assert "WROTE" not in r.stdout and "MKNOD" not in r.stdout, r
    assert not any(d in r.stdout for d in ("'sda'", "'mem'", "'kmem'", "'port'")), r


def test_read_host_files(sandbox, config_file):
    targets = ["/etc/shadow", str(REPO / "pyproject.toml"), str(REPO / "xgrader" / "config.py"),
               str(REPO / "payload_handlers" / "is_prime" / "tests" / "test_is_prime.py"),
               str(ASSIGNMENTS / "vault" / "tests" / "test_vault.py"),
               str(ASSIGNMENTS / "vault" / "solution" / "submission.py"), str(config_file),
               "/root/.bash_history", "/proc/1/root/etc/shadow", "/proc/self/root/etc/shadow"]
    src = ("for p in %r:\n    try:\n        print('READ', p, open(p).read()[:200].replace('\\n', ' '))\n"
           "    except OSError as e:\n        print('denied', p, e.errno)\n" % targets)
    r = attack(sandbox, src)
    assert "READ" not in r.stdout and r.stdout.count("denied") == len(targets), r
    assert not leaks(r.stdout, r.stderr)


def test_network_tcp_to_host_loopback(sandbox):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.1)
    port = srv.getsockname()[1]
    try:
        src = (f"import socket\nfor host in ['127.0.0.1', 'localhost', '::1', '10.0.2.2', '172.17.0.1']:\n"
               f"    try:\n        s = socket.create_connection((host, {port}), timeout=1); print('CONNECTED', host)\n"
               "    except OSError as e: print('blocked', host)\n")
        r = attack(sandbox, src)
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()
    assert "CONNECTED" not in r.stdout and r.stdout.count("blocked") == 5, r


def test_dns_lookup(sandbox):
    """Through the resolver, and as raw UDP queries to the host's nameservers."""
    servers = [line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
               if line.startswith("nameserver")] if Path("/etc/resolv.conf").exists() else []
    servers += ["1.1.1.1", "8.8.8.8"]
    query = "b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01'"
    src = ("import socket\nfor name in ['example.com', 'pypi.org']:\n"
           "    try: print('RESOLVED', name, socket.getaddrinfo(name, 80)[0][4])\n"
           "    except OSError: print('nodns', name)\n"
           f"for server in {servers!r}:\n"
           "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\n"
           f"    try: s.sendto({query}, (server, 53)); s.recvfrom(512); print('ANSWER', server)\n"
           "    except OSError as e: print('noanswer', server)\n")
    r = attack(sandbox, src, wall_s=8)
    assert "RESOLVED" not in r.stdout and "ANSWER" not in r.stdout, r
    assert r.stdout.count("noanswer") == len(servers) and r.stdout.count("nodns") == 2, r


def test_cloud_metadata_endpoint(sandbox):
    r = attack(sandbox, "import socket\ntry:\n    socket.create_connection(('169.254.169.254', 80), timeout=1)\n"
                        "    print('CONNECTED')\nexcept OSError as e: print('blocked', e.errno)\n")
    assert lines(r)[0][0] == "blocked", r


def test_udp_to_host_loopback(sandbox):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.3)
    port = rx.getsockname()[1]
    try:
        attack(sandbox, f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        f"for _ in range(5):\n    try: s.sendto(b'leak', ('127.0.0.1', {port}))\n    except OSError: pass\n")
        with pytest.raises(socket.timeout):
            rx.recvfrom(100)
    finally:
        rx.close()


def test_kill_minus_one_and_host_pids(sandbox):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        src = (f"import os, signal\nfor pid in [{sleeper.pid}, {os.getpid()}, 1]:\n"
               "    try: os.kill(pid, signal.SIGKILL); print('sent', pid)\n    except OSError as e: print('no', pid, e.errno)\n"
               "try: os.kill(-1, signal.SIGKILL)\nexcept OSError: pass\nprint('alive')\n")
        attack(sandbox, src)
        time.sleep(0.2)
        assert sleeper.poll() is None  # the host process survived every attempt
    finally:
        sleeper.kill()
        sleeper.wait()


def test_ptrace_denied(sandbox):
    src = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "print('traceme', libc.ptrace(0, 0, 0, 0), ctypes.get_errno())\n"
           "pid = os.fork()\nif pid == 0:\n    import time; time.sleep(5); os._exit(0)\n"
           "print('attach', libc.ptrace(16, pid, 0, 0), ctypes.get_errno())\n"
           "try: open(f'/proc/{pid}/mem', 'rb').read(1); print('MEM')\nexcept OSError as e: print('mem denied', e.errno)\n"
           "os.kill(pid, 9)\n")
    r = attack(sandbox, src)
    got = {l[0]: l[1:] for l in lines(r)}
    assert got["traceme"][0] == "-1" and got["attach"][0] == "-1" and "MEM" not in got, r


def test_new_namespaces_denied(sandbox):
    # CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID via unshare(2) and setns(2).
    src = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "for flag in (0x10000000, 0x40000000, 0x00020000, 0x20000000):\n"
           "    print('unshare', hex(flag), libc.unshare(flag), ctypes.get_errno())\n"
           "fd = os.open('/proc/self/ns/net', os.O_RDONLY)\n"
           "print('setns', 0, libc.setns(fd, 0), ctypes.get_errno())\n")
    r = attack(sandbox, src)
    results = lines(r)
    assert len(results) == 5 and all(l[2] == "-1" for l in results), r


def test_privileged_syscalls_denied(sandbox):
    import platform
    from xgrader.backends.seccomp import _COMMON, ARCHES
    nr = {**ARCHES[platform.machine()][1], **_COMMON}
    calls = [("mount", (nr["mount"], "b'none'", "b'/tmp'", "b'tmpfs'", 0, 0)), ("chroot", (nr["chroot"], "b'/tmp'")),
             ("keyctl", (nr["keyctl"], 0, 0)), ("bpf", (nr["bpf"], 0, 0, 0)),
             ("perf_event_open", (nr["perf_event_open"], 0, 0, 0, 0, 0)), ("io_uring_setup", (nr["io_uring_setup"], 1, 0)),
             ("init_module", (nr["init_module"], 0, 0, 0)), ("reboot", (nr["reboot"], 0, 0, 0, 0))]
    src = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n" + "".join(
        f"print('{name}', libc.syscall({', '.join(map(str, args))}), ctypes.get_errno())\n" for name, args in calls) + (
        "print('setuid0', libc.setuid(0), ctypes.get_errno())\n"
        "print('uid', os.getuid(), os.geteuid())\n")
    r = attack(sandbox, src)
    results = lines(r)
    assert len(results) == len(calls) + 2, r
    # Refused as such (EPERM, or ENOSYS from a filter), not merely failing on the
    # bogus arguments (EFAULT, EINVAL) as they would without a filter.
    assert all(l[1] == "-1" and l[2] in ("1", "38") for l in results[:len(calls)]), r
    assert results[-2][1] == "-1", r  # setuid(0): EPERM, or EINVAL where uid 0 is not even mapped
    assert results[-1][1] != "0" and results[-1][2] != "0", r  # never root inside
