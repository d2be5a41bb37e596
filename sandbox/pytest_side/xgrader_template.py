"""Collected pytest sessions, one per assignment version, in the test side's
fork server (sandbox/zygote.py): a test sandbox then only runs the tests.

A test job whose request carries a template key (the host's hash of the
assignment version, the reference solution's names and the test folders:
xgrader/handlers/pytest_kind.py) is forked by a template server for that key
instead of by the fork server itself. The fork server forks that server at
the key's first job and forwards it every request for the key:

    fork server --fork--> template server (one per key, at most MAX_SERVERS)
        a mount namespace of its own with a tmpfs at /tmp holding the job's
        files (the instructor's tests and files: the same for every job of
        the key); runs pytest.main on them as launch.py would, up to the
        test loop: configuration, plugins, session start, collection (the
        test modules imported, their assertions rewritten) against a
        `submission` proxy that knows the reference solution's names; then
        it serves forks exactly as the fork server does (zygote.Zygote:
        new namespaces, the job's cgroup, a fresh /tmp with the job's files,
        no capabilities, the seccomp filter). Each job continues from there:
        it binds the session to its channel and the host's hello and runs
        the test loop, the session's finish and pytest's unconfigure.

A template server runs the instructor's test modules, as every test job
does, but nothing of a submission ever reaches it: its jobs are its forks
and its requests come from the fork server. A job fits the collected session
when the submission defines the names the tests read at import with the
kinds the reference solution gave them (function, class, exception, or
missing); otherwise it says so first (`template_refused`) and the host
starts a plain test job. A template server whose collection fails (an
error, nothing collected, a name read at import as a value: that takes the
submission) or takes over BUILD_S exits; the requests it had not served end
without a set-up word, the host then starts plain jobs, and the fork server
answers `R` for that key until RETRY_S later.
"""

import array
import gc
import json
import os
import sys
import time

import _signal
import _socket
import pytest

MAX_SERVERS = 8
RETRY_S = 60.0
BUILD_S = 8          # under the host's wait for a job's set-up (forkserver.SPAWN_TIMEOUT_S)
FD_FLOOR = 16        # the session's own descriptors sit above what a job's are moved to
ENV = "XGRADER_PYTEST_TEMPLATE"   # {"module": name, "names": the reference solution's}

HERE = os.path.dirname(os.path.abspath(__file__))


class Router:
    """In the fork server: template servers by key, least recently used
    first; a key whose server died is refused until RETRY_S later."""

    def __init__(self):
        self.servers = {}
        self.failed = {}

    def route(self, zygote, req, msg, fds, private):
        """Forward the request to its key's server (forked first when there
        is none). Returns (argv, env) only in a job forked by a new server
        (that is, never in the fork server), else None."""
        z = sys.modules[type(zygote).__module__]
        key = str(req["template"])
        sock = self.servers.pop(key, None)
        if sock is None and time.monotonic() < self.failed.get(key, 0.0):
            return self._refuse(z, fds, "its collection failed")
        if sock is None:
            while len(self.servers) >= MAX_SERVERS:  # the least recently used one goes (EOF: it exits)
                self.servers.pop(next(iter(self.servers))).close()
            try:
                sock, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
            except OSError as exc:  # EMFILE: a plain job instead
                return self._refuse(z, fds, "cannot start its server: %s" % exc)
            sys.stdout.flush()
            sys.stderr.flush()
            # The server is pid 1 of a pid namespace of its own, as a job's
            # init is: the instructor's code it runs sees and signals nothing
            # of the fork server's or of another key's server; its jobs die with it.
            pid = -1
            try:
                z._check(z._libc.unshare(z.CLONE_NEWPID), "unshare(pid)")
                try:
                    pid = os.fork()
                finally:
                    if pid != 0:
                        z._check(z._libc.setns(private[0], z.CLONE_NEWPID), "setns(pid)")
            except (OSError, z.SetupError) as exc:  # EAGAIN, ENOMEM
                sock.close()
                theirs.close()
                return self._refuse(z, fds, "cannot start its server: %s" % exc)
            if pid == 0:
                sock.close()
                for other in self.servers.values():
                    other.close()
                zygote.sock.detach()  # closed below with every descriptor of the server's
                return serve_template(zygote, theirs, req, fds, private)
            theirs.close()
        self.servers[key] = sock
        try:
            sock.sendmsg([msg], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
        except OSError:  # that server is gone
            self.servers.pop(key).close()
            self.failed[key] = time.monotonic() + RETRY_S
            return self._refuse(z, fds, "its server is gone")
        for fd in fds:
            os.close(fd)
        return None

    @staticmethod
    def _refuse(z, fds, why):
        z._say(fds[0], "R " + why)
        for fd in fds:
            os.close(fd)
        return None


_router = None


def route(zygote, req, msg, fds, private):
    global _router
    if _router is None:
        _router = Router()
    return _router.route(zygote, req, msg, fds, private)


def serve_template(zygote, sock, req, fds, private):
    """A new template server (forked by the fork server, with its
    capabilities): builds the session, then serves. Returns (argv, env) only
    in a job it forked, which then runs the tests from the collected state
    and exits without returning."""
    z = sys.modules[type(zygote).__module__]
    try:
        _signal.set_wakeup_fd(-1)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        # A collection that hangs ends this server (as pid 1 it needs a handler for that).
        _signal.signal(_signal.SIGALRM, lambda *_: os._exit(1))
        _signal.alarm(BUILD_S)
        z._libc.prctl(z.PR_SET_NAME, b"xg-pytest-tmpl", 0, 0, 0)
        z._libc.prctl(z.PR_SET_DUMPABLE, 0, 0, 0, 0)  # its memory is no other process's to read
        memfd = fds[4] if req["files"] else -1
        z._keep_only(0, 1, 2, sock.fileno(), *([memfd] if memfd >= 0 else []))
        # Its own mounts: a /proc of its pid namespace, and a /tmp with the
        # job's files (the same for every job of this key), from which pytest
        # collects as a job would.
        z._check(z._libc.unshare(z.CLONE_NEWNS), "unshare(mount)")
        z._check(z._libc.mount(None, b"/", None, z.MS_REC | z.MS_PRIVATE, None), "make / private")
        z._check(z._libc.mount(b"proc", b"/proc", b"proc", z.MS_NOSUID | z.MS_NODEV | z.MS_NOEXEC, None),
                 "mount /proc")
        z._check(z._libc.mount(b"tmpfs", b"/tmp", b"tmpfs", z.MS_NOSUID | z.MS_NODEV,
                               b"mode=0755,size=%d" % int(req["tmp_bytes"])), "mount /tmp")
        os.mkdir(z.WORK, 0o755)
        if memfd >= 0:
            z.place_files(memfd, req["files"])
            os.close(memfd)
        os.chdir(z.WORK)
        placed = _tree("/tmp")
        # As the job's interpreter would be set up (zygote.run_script, then launch.py).
        environ = os.environ
        for name in list(environ):
            del environ[name]
        for name, value in req["env"].items():
            environ[name] = value
        environ["PWD"] = z.WORK
        spec = json.loads(environ.pop(ENV))
        sys.argv = list(req["argv"])
        sys.path[:] = [HERE, os.path.dirname(HERE), HERE] + z._BASE_PATH
        sys.dont_write_bytecode = True
        reserve = []  # the low numbers stay free: the session's descriptors land above them
        while True:
            fd = os.open("/dev/null", os.O_RDONLY)
            if fd >= FD_FLOOR:
                os.close(fd)
                break
            reserve.append(fd)
        import xgrader_proxy
        from xgrader_plugin import Reporter, pytest_args
        session = xgrader_proxy.install(None, {"module": spec["module"], "names": spec["names"]})
        collected = Collected(zygote, sock, session, Reporter(session, None), dict(spec["names"]), reserve, placed)
        code = pytest.main(pytest_args(sys.argv[1:], os.getcwd()), plugins=[collected.reporter, collected])
        if Collected.job_started:  # a job: the run is over
            collected.channel.send({"op": "done"})
    except BaseException as exc:  # noqa: BLE001
        if Collected.job_started:  # a job ends here whatever happened, never back in the server's loop
            sys.excepthook(*sys.exc_info())
            z.finish(1)
        _tell(exc)  # the template server ends; its requests fall back to plain jobs
        os._exit(1)
    if not Collected.job_started:  # pytest stopped before its test loop
        _tell("pytest ended before its test loop (exit status %s)" % code)
        os._exit(1)
    z.finish(int(code))


def _tell(what):
    try:
        sys.stderr.write("xgrader_template: no collected session: %s\n" % (what,))
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass


def _tree(root):
    """Every path under `root` with its type and size."""
    found = []
    for folder, dirs, files in os.walk(root):
        found += [(os.path.join(folder, d), "d", 0) for d in dirs]
        for name in files:
            path = os.path.join(folder, name)
            try:
                found.append((path, "f", os.lstat(path).st_size))
            except OSError:
                found.append((path, "?", 0))
    return sorted(found)


def _open_fds():
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:  # the listing's own descriptor, closed by now
            continue
        fds.add(fd)
    return fds


class Collected:
    """pytest plugin of a template server: at the test loop it serves forks;
    in each fork it binds the session to the job, then lets the loop run."""

    job_started = False

    def __init__(self, zygote, sock, session, reporter, names, reserve, placed):
        self.placed = placed    # /tmp as the job's files left it: each job starts from that
        self.zygote = zygote
        self.sock = sock
        self.session = session
        self.reporter = reporter
        self.names = names      # the reference solution's
        self.reserve = reserve
        self.channel = None
        self.lean_capture = False

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtestloop(self, session):
        if not Collected.job_started:
            self.serve(session)      # returns only in a job
            self.begin(session)
        yield
        # Every test has reported, and the last one's teardown took every
        # fixture down. What pytest does after the loop (the summary for a
        # terminal, unconfigure) and the interpreter's exit are for nobody:
        # the host ends the sandbox at `done`.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001
                pass
        try:
            self.channel.send({"op": "done"})
        finally:
            os._exit(0)

    def serve(self, session):
        config = session.config
        if _tree("/tmp") != self.placed:
            # Collection wrote files (a conftest's data, tmp_path_factory): a
            # job starts from the files alone, so it runs plain instead.
            _tell("collection changed /tmp")
            os._exit(1)
        if session.testsfailed or not session.items or config.option.collectonly:
            reporter = config.pluginmanager.getplugin("terminalreporter")
            errors = [str(getattr(r, "longrepr", ""))[-300:] for r in (reporter.stats.get("error", []) if reporter else [])]
            _tell("collection: %d error(s), %d test(s) %s" % (session.testsfailed, len(session.items), errors[:1]))
            os._exit(1)
        # Capture holds descriptors and temporary files: each job starts its own.
        config.pluginmanager.getplugin("capturemanager").stop_global_capturing()
        # What jobs need not do per test: the terminal's progress output
        # (nobody reads a job's stdout: results go over the channel, and a
        # job exits at the end of its loop, before any summary), and the
        # look-up of each test's hook proxy from its path's conftests, all of
        # them imported by now (answered once per path here).
        config.pluginmanager.unregister(name="terminalreporter")
        text = tests_text(self.placed)
        for name in unneeded_plugins(text, config):
            config.pluginmanager.unregister(name=name)
        capman = config.pluginmanager.getplugin("capturemanager")
        if capman._method == "fd" and text is not None and not any(w in text for w in FD_LEVEL):
            # No test writes below sys.stdout/sys.stderr: capturing at that
            # level spares each test phase its descriptor swaps and file reads.
            capman._method = "sys"
        self.lean_capture = capman._method == "sys" and lean_capture(capman)
        if text is not None and "pytest_current_test" not in text:
            quiet_current_test()
        session.gethookproxy = _once_per_path(session.gethookproxy)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in self.reserve:
            os.close(fd)
        sock_fd = self.sock.detach()
        server = type(self.zygote)(sock_fd, self.zygote.seccomp)
        # What the session opened (a log handler's /dev/null...) stays open in its jobs.
        server.keep_fds = tuple(_open_fds() - {0, 1, 2, sock_fd})
        server.routes_templates = False
        server.lone_jobs = True   # its jobs run tests, never student code: no init per job
        _signal.alarm(0)
        _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)
        gc.collect()
        job = server.serve()  # this server stays in there; its jobs come back
        Collected.job_started = True
        self.job = job

    def begin(self, session):
        """In a job: its environment and channel, the host's hello, and the
        submission's names checked against what the tests read at import."""
        z = sys.modules[type(self.zygote).__module__]
        _argv, env = self.job
        # The job's environment is the one this server collected with (plus
        # what the tests' modules set at import, as in a plain run) and the
        # job's own channels.
        environ = os.environ
        for name, value in env.items():
            if environ.get(name) != value:
                environ[name] = value
        environ.pop(ENV, None)
        from runner_core import Channel
        spec = environ.pop("XGRADER_CHANNEL", "")
        if not spec:
            sys.stderr.write("launch: no XGRADER_CHANNEL\n")
            z.finish(2)
        channel = self.channel = Channel(spec)
        hello = channel.recv()
        if not isinstance(hello, dict) or hello.get("op") != "hello":
            z.finish(2)
        if not fits(self.session.accessed, self.names, dict(hello.get("names") or {})):
            channel.send({"op": "template_refused"})
            z.finish(0)
        self.session.start(channel, hello)
        self.reporter.channel = channel
        self.reporter.collected(session)
        capman = session.config.pluginmanager.getplugin("capturemanager")
        capman.start_global_capturing()
        if not self.lean_capture:  # lean: it stays on for the whole run
            capman.suspend_global_capture()


# pytest plugins whose per-test work (each test's three phases) jobs skip
# when no test file or conftest of the assignment mentions what would make
# them matter (a case-insensitive text check of every .py file the job gets):
#   logging-plugin: per-phase log capture, the `caplog` fixture;
#   warnings: per-test warning filters and records (`filterwarnings` marks,
#     a warning turned into an error, an async fixture's deprecation error);
#   unraisableexception, threadexception: they only turn an exception in a
#     `__del__` or a thread into a warning, which matters only through the
#     warnings filters above.
# docs/assignments.md (the pytest kind) says the same to authors.
PLUGIN_MARKERS = {
    "logging-plugin": ("logging", "caplog"),
    "warnings": ("warn", "async"),
    "unraisableexception": ("warn", "async"),
    "threadexception": ("warn", "async"),
}


# What a test would need pytest's descriptor-level capture for (output
# written below sys.stdout/sys.stderr: `capfd`, child processes, os.write;
# at sys level it would reach the job's own stdout/stderr pipes instead of
# pytest's files): without any of these words in the assignment's .py files,
# a collected session's jobs capture at sys level (print, sys.stdout.write,
# `capsys` and `student_output` work the same at both).
FD_LEVEL = ("capfd", "fileno", "subprocess", "system", "os.write", "popen", "spawn", "exec", "fork",
            "__stdout__", "__stderr__", "ctypes", "cffi", "dup", "faulthandler", "/dev/", "open(1",
            "open(2")


def tests_text(placed):
    """Every .py file under /tmp, lower-cased, as one text (None when one
    cannot be read)."""
    text = []
    for path, kind, _size in placed:
        if kind == "f" and path.endswith(".py"):
            try:
                with open(path, "rb") as f:
                    text.append(f.read().decode("utf-8", "replace").lower())
            except OSError:
                return None
    return "\n".join(text)


def unneeded_plugins(text, config):
    """The names in PLUGIN_MARKERS that `text` does not mention (none when
    it is None, or warning filters come from the command line, the
    environment or the ini file)."""
    if text is None:
        return []
    if sys.warnoptions or os.environ.get("PYTHONWARNINGS") or config.known_args_namespace.pythonwarnings \
            or config.getini("filterwarnings"):
        return []
    return [name for name, markers in PLUGIN_MARKERS.items()
            if config.pluginmanager.has_plugin(name) and not any(m in text for m in markers)]


def lean_capture(capman):
    """A collected session's jobs keep pytest's global capture (sys level)
    on for the whole run instead of switching it on and off around each
    test phase and reading what each phase printed into the test's report:
    nobody reads those report sections here (results go over the channel,
    built from the proxy's record of what the student's code printed), and
    what the tests print stays in the capture's memory either way. The
    `capsys` fixture and `student_output` work the same. False (nothing
    changed) where this pytest's capture manager lacks the methods used."""
    import contextlib
    if not all(hasattr(capman, name) for name in ("item_capture", "activate_fixture", "deactivate_fixture")):
        return False

    @contextlib.contextmanager
    def item_capture(when, item):
        capman.activate_fixture()
        try:
            yield
        finally:
            capman.deactivate_fixture()

    capman.item_capture = item_capture
    return True


def quiet_current_test():
    """No PYTEST_CURRENT_TEST in the environment during each test phase
    (four environment writes per test) when no test file mentions it."""
    from _pytest import runner
    if callable(getattr(runner, "_update_current_test_var", None)):
        runner._update_current_test_var = lambda item, when: None


def _once_per_path(gethookproxy):
    proxies = {}

    def cached(fspath):
        proxy = proxies.get(fspath)
        if proxy is None:
            proxy = proxies[fspath] = gethookproxy(fspath)
        return proxy
    return cached


def fits(accessed, reference, names):
    """Whether a submission with `names` imports into the collected session
    as it would into a fresh one: every name the tests read at import has
    the kind the reference solution gave it (None: missing in both)."""
    for name, kind in accessed.items():
        if name == "__all__":
            if {k: v for k, v in reference.items() if not k.startswith("_")} != \
                    {k: v for k, v in names.items() if not k.startswith("_")}:
                return False
        elif names.get(name) != kind:
            return False
    return True
