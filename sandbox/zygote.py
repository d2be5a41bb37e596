"""Fork server inside a long-lived bwrap sandbox: `python3 -I [-S] zygote.py SOCKET_FD SECCOMP_FD MODULE...`.

Stdlib only; it never runs student code itself. It imports MODULE... (the
runner, or pytest for the test side) once, then for every request from the
host (a SOCK_SEQPACKET socket, fd SOCKET_FD) forks a fresh sandbox for
one job instead of starting bwrap and an interpreter again:

    zygote --fork--> G: pid 1 of a new pid namespace (the zygote unshares
                        it for this one child, then returns to its own);
                        joins the job's cgroups (writes "0" to the `tasks` (v1) or
                        `cgroup.procs` (v2) fds the host
                        opened), unshares mount, network and IPC namespaces,
                        forks W; drops every capability and reaps; the
                        zygote reports its exit
      G --fork--> W: pid 2, in G's namespaces: makes every mount private,
                        mounts a new size-capped tmpfs at /tmp with the job's
                        files and a new /proc, brings loopback up; then stdio
                        and channel on fds 0-4, everything else closed,
                        rlimits, no capabilities, the seccomp filter, the
                        job's environment, cwd /tmp/work; then it returns
                        out of the zygote's loop and runs the job's script as
                        __main__, the way `python3 -I [-S] SCRIPT ARGS` would.
                        Without a cgroup for the job (request `userns`), W
                        first enters a user namespace of its own: the
                        job's RLIMIT_NPROC counts the processes there, so
                        one job's processes never count against another's.

Nothing is shared between two jobs: each gets its own namespaces (processes,
mounts, network, IPC), its own /tmp, its own cgroup, and a copy-on-write copy
of a process that only ever imported library code. The zygote keeps
CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_SETPCAP inside its (unprivileged) user
namespace to build those namespaces, and no seccomp filter (it must mount);
it empties its bounding and ambient sets before serving, so every job
process starts with both empty, and each drops the rest (effective,
permitted, inheritable) before anything of the job runs; W loads the
deny-list. The zygote exits when the host's end of its socket closes.

Status lines to the host on the job's status socket: `S` (set up: the job's
code starts now), `E message` (the sandbox could not be set up: an
infrastructure error, no student code ran), `X code cpu_us maxrss_kb` (exit:
the script's exit status, 128+N when killed by signal N, as bwrap reports
it; the CPU time and largest resident size of everything the job's init
reaped). The host never writes on that socket: when its end closes before
the job's exit (the host process died), the zygote kills the job's init, and
with it the job's pid namespace.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# What `python3 -I [-S] SCRIPT` puts on sys.path after the script's folder.
_BASE_PATH = [p for p in sys.path if p != _HERE]

import _socket  # noqa: E402  (not `socket`: that pulls in enum and selectors)
import ctypes  # noqa: E402
import errno  # noqa: E402
import gc  # noqa: E402
import fcntl  # noqa: E402
import resource  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import _signal  # noqa: E402
import struct  # noqa: E402

sys.path.insert(0, _HERE)
from runner_core import json_loads  # noqa: E402

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
# What bwrap's --proc leaves read-only; a new /proc must hide them again.
PROC_READ_ONLY = (b"/proc/sys", b"/proc/sysrq-trigger", b"/proc/irq", b"/proc/bus")
PR_SET_DUMPABLE, PR_SET_NAME, PR_SET_SECCOMP, PR_CAP_AMBIENT = 4, 15, 22, 47
PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER, PR_CAPBSET_READ, PR_CAPBSET_DROP = 4, 2, 23, 24
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
MAX_REQUEST = 1 << 16
MAX_FDS = 32
# Above every descriptor a job process holds: the server's hard RLIMIT_NOFILE
# (forkserver.ZYGOTE_LIMITS) is far below it; a job lowers its own later.
MAX_FD = 1 << 16
WORK = "/tmp/work"

_libc = ctypes.CDLL(None, use_errno=True)
# Looked up once here: a lookup in a job creates the function object there
# (copy-on-write faults in every job for what the server could share).
for _name in ("prctl", "capset", "unshare", "setns", "mount"):
    getattr(_libc, _name)
# capset()'s arguments, built once: the header and two zeroed data structs.
_CAP_HEADER = ctypes.create_string_buffer(struct.pack("=Ii", LINUX_CAPABILITY_VERSION_3, 0), 8)
_CAP_NONE = ctypes.create_string_buffer(24)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class SetupError(Exception):
    pass


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise SetupError("%s: %s" % (what, os.strerror(err)))


def empty_bounding_set():
    """The server empties its bounding set and ambient set once, before it
    serves: every job process inherits both empty (no process can ever add
    to its bounding set), so a job only has to clear its own sets. Fails
    (the server does not start) if anything is left."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EINVAL:
                break  # past the last capability this kernel knows
            _check(-1, "prctl(CAPBSET_DROP)")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(CAP_AMBIENT)")
    for cap in range(64):
        left = _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0)
        if left < 0:
            break
        if left:
            raise SetupError("capability %d is still in the bounding set" % cap)


def drop_capabilities():
    """Empty effective, permitted and inheritable sets (which empties the
    ambient set too); the bounding set is empty since the server's
    empty_bounding_set(), and with no_new_privs (bwrap set it) no exec can
    bring any capability back."""
    _check(_libc.capset(_CAP_HEADER, _CAP_NONE), "capset")
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")


def own_user_namespace():
    """W, when no cgroup holds the job (rlimit mode): a user namespace of the
    job's own, with the same ids mapped. RLIMIT_NPROC counts the processes of
    one uid per user namespace, so the job's limit (set after this) counts
    the job's processes only, not those of concurrent jobs of this server.
    The mounts were made before: they belong to the server's namespace and
    cannot be changed from here. A new user namespace comes with a full
    bounding set: it is emptied again."""
    uid, gid = os.getuid(), os.getgid()
    # init made itself (and so this copy) non-dumpable: /proc/self would be
    # root's, its uid_map not ours to write. The job is made dumpable anyway.
    _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    _check(_libc.unshare(CLONE_NEWUSER), "unshare(user)")
    for path, data in ((b"/proc/self/uid_map", b"%d %d 1" % (uid, uid)),
                       (b"/proc/self/setgroups", b"deny"),
                       (b"/proc/self/gid_map", b"%d %d 1" % (gid, gid))):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    empty_bounding_set()


def load_seccomp(program, prog_struct):
    if program:
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog_struct), 0, 0), "seccomp")


def pin_cpu(cpu):
    """Run on that CPU only (the host pairs the sandboxes that call each
    other: xgrader/backends/cpus.py). A placement hint: a CPU this process
    may not use is ignored."""
    if type(cpu) is int and cpu >= 0:
        try:
            os.sched_setaffinity(0, (cpu,))
        except (OSError, ValueError, OverflowError):
            pass


def loopback_up():
    """bwrap brings `lo` up in the namespaces it creates; so do we."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    finally:
        sock.close()


def place_files(fd, files):
    """The job's files, concatenated in one memfd, under /tmp/work (copied
    in the kernel: no job-sized buffers in a forked process)."""
    offset = 0
    made = {WORK}
    for rel, size in files:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise SetupError("bad file name")
        dest = WORK + "/" + rel
        folder = dest.rpartition("/")[0]
        if folder not in made:
            os.makedirs(folder, mode=0o755, exist_ok=True)
            made.add(folder)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            left = size
            while left:
                sent = os.sendfile(out, fd, offset, left)
                if not sent:
                    raise SetupError("short file data")
                offset += sent
                left -= sent
        finally:
            os.close(out)


def _say(fd, line):
    try:
        os.write(fd, line.encode("utf-8", "replace")[:4000] + b"\n")
    except OSError:
        pass


def _describe(exc):
    return str(exc) if isinstance(exc, SetupError) else "%s: %s" % (type(exc).__name__, exc)


def _keep_only(*keep):
    """Close every descriptor but `keep` (the zygote's socket included): a
    close_range() per gap instead of a listing of /proc/self/fd."""
    low = 0
    for fd in sorted(keep):
        if fd > low:  # never closerange(0, 0): CPython 3.11 makes that close_range(0, ~0)
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, MAX_FD)


class Zygote:
    # Descriptors a job keeps besides its own: a template server's session's
    # (pytest_side/xgrader_template.py); none for the fork server itself.
    keep_fds = ()
    # Whether requests with a template key go to a template server (the
    # fork server), or are forked here as they are (a template server).
    routes_templates = True
    # Whether a job's W is forked straight into its pid namespace as its
    # pid 1, without an init (a template server's test jobs: see lone()).
    lone_jobs = False

    def __init__(self, sock_fd, seccomp):
        self.sock = _socket.socket(fileno=sock_fd)
        self.seccomp = seccomp
        # What bwrap's --proc made read-only and exists on this kernel: the
        # same in every job's new /proc.
        self.proc_read_only = [p for p in PROC_READ_ONLY if os.path.exists(p)]
        # Built before any fork: W only passes the address on.
        self._filter = ctypes.create_string_buffer(seccomp, len(seccomp))
        self._prog = _SockFprog(len(seccomp) // 8, ctypes.cast(self._filter, ctypes.c_void_p))

    def serve(self):
        """Forks one sandbox per request and reports each job's exit. Returns
        (argv, env) in a job's W process only; exits when the host's end
        closes."""
        own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below
        jobs = {}  # init pid -> its status socket
        owners = {}  # status socket -> init pid: EOF there means the host is gone
        # Everything imported so far lives as long as the zygote: no collection
        # in a job may walk it (that would copy every page of it).
        gc.collect()
        gc.freeze()
        self.sock.send(b"ready")
        while True:
            ready, _, _ = select.select([self.sock, wake_r, *owners], [], [])
            if wake_r in ready:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            self.reap(jobs, owners)
            for fd in ready:
                if fd in owners:
                    self.orphaned(fd, owners)
            if self.sock not in ready:
                continue
            msg, anc, _flags, _addr = self.sock.recvmsg(MAX_REQUEST, _socket.CMSG_SPACE(MAX_FDS * 4))
            if not msg:
                os._exit(0)  # the host is gone: so is this pid namespace, every job in it
            fds = []
            for level, kind, data in anc:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    fds += struct.unpack("%di" % (len(data) // 4), data[: len(data) - len(data) % 4])
            status = fds[0] if fds else -1
            pid = -1
            try:
                req = json_loads(msg)
                if len(fds) != (4 + bool(req["files"]) + 2 * bool(req["channel"]) + 2 * bool(req.get("peer"))
                                + req["cgroups"]):
                    raise SetupError("descriptor count does not match the request")
                if req.get("template") and self.routes_templates:  # a collected pytest session's job
                    job = self.route_template(req, msg, fds, (own_pid_ns, wake_r, wake_w))
                    if job is not None:
                        return job  # only in a job forked by a new template server
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                # The next child is pid 1 of a new pid namespace; then back to ours.
                _check(_libc.unshare(CLONE_NEWPID), "unshare(pid)")
                try:
                    pid = os.fork()
                finally:
                    if pid != 0:
                        _check(_libc.setns(own_pid_ns, CLONE_NEWPID), "setns(pid)")
            except BaseException as exc:  # noqa: BLE001 - reported, never raised into the host
                _say(status, "E " + _describe(exc))
                for fd in fds:
                    os.close(fd)
                continue
            if pid == 0:
                # _signal, not signal's enum wrappers (~65 pages fewer copied).
                _signal.set_wakeup_fd(-1)
                _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                for fd in (own_pid_ns, wake_r, wake_w):
                    os.close(fd)
                self.sock.close()
                if self.lone_jobs:
                    return self.lone(req, fds)  # W itself
                return self.init(req, fds)  # returns only in W
            jobs[pid] = status
            owners[status] = pid
            for fd in fds[1:]:
                os.close(fd)

    def route_template(self, req, msg, fds, private):
        """Hand a request with a template key to the template server of that
        key (pytest_side/xgrader_template.py, imported with pytest): it
        answers `R` when there is none to be had, and the host then asks
        for a plain job."""
        templates = sys.modules.get("xgrader_template")
        if templates is None:
            _say(fds[0], "R no collected sessions here")
            for fd in fds:
                os.close(fd)
            return None
        return templates.route(self, req, msg, fds, private)

    @staticmethod
    def reap(jobs, owners):
        """Each job's exit status, to its status socket (`X code cpu_us
        maxrss_kb`)."""
        while jobs:
            try:
                pid, st, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status = jobs.pop(pid, None)
            if status is not None:
                owners.pop(status, None)
                code = os.waitstatus_to_exitcode(st)
                _say(status, "X %d %d %d" % (code if code >= 0 else 128 - code,
                                             (ru.ru_utime + ru.ru_stime) * 1e6, ru.ru_maxrss))
                os.close(status)

    @staticmethod
    def orphaned(status, owners):
        """The host closed a job's status socket before the job's exit: the
        process that started the job is gone, so is the job (its init dies,
        the kernel kills the rest of its pid namespace). Reaped as usual."""
        try:
            if os.read(status, 64):
                return  # the host never writes; ignore anything
        except OSError:
            pass
        pid = owners.pop(status)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def init(self, req, fds):
        """G: pid 1 of the job's pid namespace. It joins the job's cgroups,
        unshares the job's mount, network and IPC namespaces and forks W at
        once: W builds the job's filesystem itself (it holds the same
        capabilities until it drops them), so this process runs as little
        Python as possible (each page it touches is a copy-on-write fault,
        and so is each page it dirtied before the fork that W then
        touches). Then it drops every capability, relays W's set-up word
        and reaps until W is gone (the namespace dies with it)."""
        status = fds[0]
        _libc.prctl(PR_SET_NAME, b"xg-job-init", 0, 0, 0)
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        try:
            n_cg = req["cgroups"]
            for fd in fds[len(fds) - n_cg:]:  # "0": the writer itself (its one thread: no global lock on v1)
                os.write(fd, b"0")
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC), "unshare")
            ready_r, ready_w = os.pipe()
            pid = os.fork()
        except BaseException as exc:  # noqa: BLE001
            _say(status, "E " + _describe(exc))
            os._exit(1)
        if pid == 0:
            return self.worker(req, fds, ready_w)
        _keep_only(status, ready_r)
        try:
            drop_capabilities()
        except SetupError as exc:
            _say(status, "E %s" % exc)
            os._exit(1)
        word = b""
        while True:
            try:
                word = os.read(ready_r, 4000)
                break
            except InterruptedError:
                continue
        os.close(ready_r)
        _say(status, "S" if word == b"S" else "E " + (word.decode("utf-8", "replace") or "the job died while being set up"))
        os.close(status)
        code = None
        while True:
            try:
                got, st = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if got == pid:
                code = os.waitstatus_to_exitcode(st)
                break
        os._exit(code if code is not None and code >= 0 else 128 - (code or -9))

    def lone(self, req, fds):
        """A job without an init: this process, forked by the server into
        the job's new pid namespace, is its pid 1 and becomes W. It joins the
        job's cgroups and unshares mount, network and IPC namespaces as init
        would, then builds the job as W and says `S` (or `E why`) on the
        status socket itself, closing it before anything of the job runs;
        the server reaps it and reports its exit. Used by template servers
        (pytest_side/xgrader_template.py), whose jobs run the instructor's
        tests and never student code: one fork of a ~27 MB process and its
        exit fewer per test job. What differs from a job with an init: pid 1
        ignores the signals it has no handler for when they come from inside
        its namespace, and orphans of the job's own processes stay zombies
        until the job ends (the namespace dies with it, as before)."""
        status = fds[0]
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        try:
            n_cg = req["cgroups"]
            for fd in fds[len(fds) - n_cg:]:
                os.write(fd, b"0")
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC), "unshare")
        except BaseException as exc:  # noqa: BLE001
            _say(status, "E " + _describe(exc))
            os._exit(1)
        return self.worker(req, fds, status, lone=True)

    def worker(self, req, fds, ready_w, lone=False):
        """W: builds the job's filesystem in the namespaces init made, then
        becomes the job. Returns (argv, env) to run the script at top level.
        `lone`: `ready_w` is the status socket (no init relays the word)."""
        _libc.prctl(PR_SET_NAME, b"python3", 0, 0, 0)  # what a job sees in /proc/self/comm
        try:
            # Nothing mounted here may propagate back to the zygote or other jobs.
            _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
            _check(_libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
                               b"mode=0755,size=%d" % int(req["tmp_bytes"])), "mount /tmp")
            # Mounted from inside the job's pid namespace: it shows that one.
            _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
            for path in self.proc_read_only:
                _check(_libc.mount(path, path, None, MS_BIND | MS_REC, None), "bind " + path.decode())
                _check(_libc.mount(path, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None),
                       "read-only " + path.decode())
            loopback_up()
            os.mkdir(WORK, 0o755)
            if req["files"]:
                place_files(fds[4], req["files"])
            os.chdir(WORK)
            if req.get("userns"):
                own_user_namespace()
            # stdio, then the channel, then the set-up pipe on the lowest
            # numbers (copies far above them first, so no dup2 clobbers a
            # source), then everything else closed (the cgroup files, the
            # memfd, the status socket, the zygote's) in one close_range.
            wanted = fds[1:4]
            first = 5 if req["files"] else 4
            if req["channel"]:
                wanted += fds[first:first + 2]
                first += 2
            if req.get("peer"):  # a second channel, right after the first (pytest_side)
                wanted += fds[first:first + 2]
            moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in wanted + [ready_w]]
            for i, fd in enumerate(moved):
                os.dup2(fd, i)
            ready_w = len(wanted)
            _keep_only(*range(ready_w + 1), *self.keep_fds)
            for res, soft, hard in req["rlimits"]:
                resource.setrlimit(res, (soft, hard))
            pin_cpu(req.get("cpu"))
            os.setsid()
            drop_capabilities()
            # Like a fresh process: dumpable (what student code sees in /proc/self).
            _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
            load_seccomp(self.seccomp, self._prog)
            env = dict(req["env"])
            env["PWD"] = WORK  # bwrap --chdir sets it too
            if req["channel"]:
                env["XGRADER_CHANNEL"] = "fd:3,4"
            if req.get("peer"):
                env["XGRADER_PEER"] = "fd:5,6" if req["channel"] else "fd:3,4"
            os.write(ready_w, b"S\n" if lone else b"S")
            os.close(ready_w)
        except BaseException as exc:  # noqa: BLE001
            try:
                why = _describe(exc).encode("utf-8", "replace")[:3000]
                os.write(ready_w, b"E " + why + b"\n" if lone else why)
            except OSError:
                pass
            os._exit(125)
        return req["argv"], env


# The entry scripts jobs run, compiled once by the server (compiling one in
# every job costs more than running it): path -> (identity, code object).
ENTRY_SCRIPTS = ("runner.py", "pytest_side/launch.py")
_compiled = {}


def _identity(st):
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _compile_script(path):
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        return _identity(st), compile(f.read(), path, "exec", dont_inherit=True)


def precompile_entry_scripts():
    """In the server, before serving: the code of the scripts jobs start."""
    for rel in ENTRY_SCRIPTS:
        path = os.path.join(_HERE, rel)  # as jobs' argv name it
        try:
            _compiled[path] = _compile_script(path)
        except (OSError, SyntaxError, ValueError):
            pass  # a job compiles it itself (and reports what is wrong)


def run_script(argv, env):
    """What the interpreter does for `python3 -I [-S] SCRIPT ARGS`: the
    script's folder first on sys.path, the script run as __main__ (the
    server's compiled code when the file is still the one it compiled)."""
    # What clear() + update() do, without MutableMapping's generic paths
    # (popitem, an ABC isinstance check): ~50 fewer pages touched in a job.
    environ = os.environ
    for key in list(environ):
        del environ[key]
    for key, value in env.items():
        environ[key] = value
    script = argv[0]
    sys.argv = list(argv)
    sys.path[:] = [os.path.dirname(script)] + _BASE_PATH
    import builtins
    main = type(sys)("__main__")
    main.__file__ = script
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    cached = _compiled.get(script)
    if cached is not None and cached[0] == _identity(os.stat(script)):
        code = cached[1]
    else:
        code = _compile_script(script)[1]
    exec(code, main.__dict__)


def _zygote_main():
    # Descriptors come as arguments, not environment variables: a job's
    # /proc/1/environ and /proc/self/environ show the environment this process
    # started with (PATH and LANG only).
    sock_fd, seccomp_fd = int(sys.argv[1]), int(sys.argv[2])
    empty_bounding_set()
    for name in sys.argv[3:]:
        try:
            __import__(name)
        except ImportError:  # e.g. no pytest here: its jobs fail as they would cold
            pass
    if sys.path and sys.path[0] == _HERE:
        del sys.path[0]
    precompile_entry_scripts()
    seccomp = b""
    if seccomp_fd >= 0:
        while True:
            chunk = os.read(seccomp_fd, 1 << 16)
            if not chunk:
                break
            seccomp += chunk
        os.close(seccomp_fd)
    # Serve as pid 1 of a pid namespace of our own user namespace: bwrap's
    # belongs to the user namespace outside --disable-userns's nested one, and
    # returning there after forking a job (setns) would be refused.
    _check(_libc.unshare(CLONE_NEWPID), "unshare(pid)")
    server = os.fork()
    if server != 0:
        os.close(sock_fd)
        while True:
            try:
                _, st = os.waitpid(server, 0)
                break
            except InterruptedError:
                continue
        os._exit(os.waitstatus_to_exitcode(st) & 0xFF)
    _libc.prctl(PR_SET_NAME, b"xg-fork-server", 0, 0, 0)
    return Zygote(sock_fd, seccomp).serve()


def _exit_code(exc):
    """The process exit status SystemExit(code) means, printing a non-int code as Python does."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(str(code) + "\n")
    except BaseException:  # noqa: BLE001
        pass
    return 1


def finish(code):
    """The parts of interpreter shutdown a program can observe: non-daemon
    threads joined, atexit handlers, every open file flushed (Python would
    flush them as it frees them). Not the rest: tearing down the zygote's
    imported modules would copy nearly every page inherited from it, which
    costs more than the job's own work; __del__ methods still pending are
    not run (Python never promised that at exit)."""
    import atexit
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:  # noqa: BLE001
            pass
    try:
        atexit._run_exitfuncs()
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001  (atexit already printed it)
        pass
    # The C base classes: what the interpreter's own finalizer flushes (a
    # class derived from io.IOBase is one of them), and no ABC check per
    # object (three times faster over a job's objects).
    import _io
    streams = [o for o in gc.get_objects() if isinstance(o, _io._IOBase)]
    # Text layers first: their flush pushes pending text into their buffer.
    streams.sort(key=lambda o: not isinstance(o, _io._TextIOBase))
    for stream in [*streams, sys.stdout, sys.stderr]:
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except BaseException:  # noqa: BLE001  (a broken pipe, a full disk: as at exit)
            pass
    os._exit(code)


if __name__ == "__main__":
    _job = _zygote_main()
    del _zygote_main
    try:
        run_script(*_job)
        _code = 0
    except SystemExit as _exc:
        _code = _exit_code(_exc)
    except BaseException:  # noqa: BLE001  (printed like an uncaught exception)
        sys.excepthook(*sys.exc_info())
        _code = 1
    finish(_code)
