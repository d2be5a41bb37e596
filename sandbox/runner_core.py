"""In-sandbox runner: serves the host's requests against the student's code.

Stdlib only. Started through `python3 -I -S runner.py [exec FILE]` (see
PROTOCOL.md): runner.py is a small entry point that imports this module, so
its bytecode comes from __pycache__ (written once by the host; read-only in
the sandbox) instead of being compiled in every sandbox. It takes the channel
before any student code runs. Everything it sends is data for the host to
check: the host never takes a verdict from it (the student's code runs in
this very process and could forge anything here).
"""

import os
import sys

WORKDIR = os.getcwd()
OUT_CAP = 64 * 1024          # per request and stream
MAX_LINE = 4 * 1024 * 1024   # the host refuses longer lines
MAX_DEPTH = 48               # the host refuses deeper than 64 (tags add a level)
MARKER = "##xgrader-error## "  # exec mode: last stderr line describing a crash
SAMPLE_MARKER = "##xgrader-sample## "  # exec mode: where a program was when it ran long


# -- JSON ------------------------------------------------------------------------
# The C accelerator `_json` directly: `import json` pulls in re and enum, about
# a quarter of the runner's start-up CPU. Same wire format as json.dumps /
# json.loads (NaN/Infinity accepted, TypeError for non-JSON values); falls back
# to the json package when an interpreter has no _json.

def _make_codec():
    try:
        import _json
        inf = float("inf")
        constants = {"NaN": float("nan"), "Infinity": inf, "-Infinity": -inf}

        class _Ctx:
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            parse_constant = constants.__getitem__
            memo = {}

        scan = _json.make_scanner(_Ctx())

        def _refuse(o):
            raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)

        def dumps(obj, separators=(", ", ": "), ensure_ascii=True):
            enc = _json.encode_basestring_ascii if ensure_ascii else _json.encode_basestring
            chunks = _json.make_encoder({}, _refuse, enc, None, separators[1], separators[0],
                                        False, False, True)(obj, 0)
            return "".join(chunks)

        def loads(data):
            text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
            text = text.strip(" \t\n\r")
            try:
                obj, end = scan(text, 0)
            except StopIteration:
                raise ValueError("not a JSON document") from None
            if end != len(text):
                raise ValueError("extra data after the JSON document")
            return obj

        return dumps, loads
    except (ImportError, AttributeError, TypeError):
        import json
        return json.dumps, json.loads


json_dumps, json_loads = _make_codec()


# -- channel -------------------------------------------------------------------

class Channel:
    def __init__(self, spec):
        self.buf = b""
        self.sock = None
        if spec.startswith("fd:"):
            r, w = (int(x) for x in spec[3:].split(","))
            # Private copies above the low numbers student code would guess.
            self.r, self.w = os.dup(r), os.dup(w)
            for fd in {r, w}:
                os.close(fd)
        elif spec.startswith("unix:"):
            import socket
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(spec[5:])
            self.r = self.w = self.sock.fileno()
        else:
            raise SystemExit("runner: bad XGRADER_CHANNEL")

    def recv(self):
        while b"\n" not in self.buf:
            chunk = os.read(self.r, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
            if len(self.buf) > MAX_LINE and b"\n" not in self.buf:
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return json_loads(line)

    def send(self, msg):
        data = json_dumps(msg, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")
        if len(data) >= MAX_LINE:
            data = json_dumps({"id": msg.get("id"), "ok": False, "error": {
                "type": "OverflowError", "builtin": True,
                "message": "the value is too large to send back", "traceback": ""}}).encode()
        data += b"\n"
        while data:
            n = os.write(self.w, data)
            data = data[n:]


# -- standard streams ------------------------------------------------------------
# Student code gets real text streams (io.TextIOWrapper over a buffered file
# descriptor, as the interpreter builds them): reconfigure(), .buffer,
# fileno(), encoding, errors, isatty(), close() all behave as in a program.

def std_stream(fd, name, like=None, line_buffering=False, raw=None):
    """sys.<name> over `fd` the way the interpreter builds it at start-up
    (encoding and errors taken from `like`, the interpreter's own stream)."""
    import io
    if raw is None:
        raw = io.FileIO(fd, "rb" if name == "stdin" else "wb", closefd=False)
    try:
        raw.name = "<%s>" % name
    except AttributeError:
        pass
    buffer = (io.BufferedReader if name == "stdin" else io.BufferedWriter)(raw, io.DEFAULT_BUFFER_SIZE)
    encoding = getattr(like, "encoding", None) or "utf-8"
    errors = "backslashreplace" if name == "stderr" else (getattr(like, "errors", None) or "strict")
    stream = io.TextIOWrapper(buffer, encoding, errors, newline="\n", line_buffering=line_buffering)
    stream.mode = "r" if name == "stdin" else "w"
    return stream


def fresh_stdio():
    """New sys.stdin/stdout/stderr (and sys.__std*__) for fds 0-2. A forked
    job (sandbox/zygote.py) inherits stream objects built for the fork server's
    descriptors: cached seekability makes reconfigure() fail with ESPIPE on a
    pipe. The interpreter's encoding and errors are kept."""
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        old = getattr(sys, "__%s__" % name, None) or getattr(sys, name, None)
        try:
            os.fstat(fd)
            stream = std_stream(fd, name, old, line_buffering=name == "stderr" or (
                name == "stdout" and os.isatty(fd)))
        except (OSError, ValueError):
            continue  # a closed descriptor: as the interpreter, keep what is there
        setattr(sys, name, stream)
        setattr(sys, "__%s__" % name, stream)


def _counted_file():
    """io.FileIO counting the bytes the student's streams write through it."""
    import io

    class CountedFile(io.FileIO):
        budget = None

        def write(self, data):
            self.budget.spend(len(data))
            return io.FileIO.write(self, data)

        def seekable(self):
            return False  # like the pipe a program's stdout is

    return CountedFile


class Output:
    """What the student's code prints during one request, captured at the
    descriptor level: during a request fds 1 and 2 point at emptied
    in-memory files (memfd) and sys.stdout/sys.stderr are text streams over
    fds 1 and 2; afterwards the real descriptors come back. So print(),
    sys.stdout.buffer, os.write(sys.stdout.fileno(), ...), sys.__stdout__ and
    child processes are all captured, in the order they reached the
    descriptor. The streams live as long as the runner, as in a program
    (`write = sys.stdout.write` at import keeps working, a reconfigure()
    stays); one the code closed ends that request's output (what was
    printed before counts) and is replaced for the next request.

    Written through these streams past `cap` bytes (stdout + stderr), or
    found past it at the end, the request ends with an output-limit verdict
    (`on_limit`)."""

    def __init__(self, on_limit):
        self.real = (sys.stdout, sys.stderr, sys.stdin)  # the runner's own
        self.like = sys.stdout      # the interpreter's stdout: encoding, errors
        self.on_limit = on_limit
        self.cap = 1000000
        self.used = 0
        self.saved = {}
        self.sinks = {}
        self.out = self.err = self.stdin = None
        self.file_type = _counted_file()
        self.file_type.budget = self

    def spend(self, n):
        self.used += n
        if self.used > self.cap:
            self.on_limit()

    def _sink(self, fd):
        """The in-memory file behind `fd` during requests (empty: end() empties it)."""
        sink = self.sinks.get(fd)
        if sink is None:
            try:
                sink = os.memfd_create("std%s" % ("out" if fd == 1 else "err"))
            except (AttributeError, OSError):
                sink = os.open(os.path.dirname(WORKDIR) or "/tmp", os.O_TMPFILE | os.O_RDWR, 0o600)
            self.sinks[fd] = sink
        return sink

    def _stream(self, fd, name):
        return std_stream(fd, name, self.like, line_buffering=name == "stderr",
                          raw=self.file_type(fd, "wb", closefd=False))

    def begin(self):
        """Point fds 1 and 2 at empty sinks and sys.stdout/stderr/stdin at
        the student's streams."""
        import io
        self.used = 0
        _flush(self.real[:2])  # the runner's own, before the switch
        for fd in (1, 2):
            if fd not in self.saved:
                try:
                    self.saved[fd] = os.dup(fd)
                except OSError:
                    self.saved[fd] = None  # closed at start: restored as closed
            os.dup2(self._sink(fd), fd)
        if self.out is None or self.out.closed:
            self.out = self._stream(1, "stdout")
        if self.err is None or self.err.closed:
            self.err = self._stream(2, "stderr")
        if self.stdin is None or self.stdin.closed:
            self.stdin = io.TextIOWrapper(io.BytesIO(), "utf-8")
            self.stdin.mode = "r"
        # sys.__stdout__ is sys.stdout in a program (`sys.stdout = sys.__stdout__` undoes a redirect).
        sys.stdout, sys.stderr, sys.stdin = sys.__stdout__, sys.__stderr__, sys.__stdin__ = (
            self.out, self.err, self.stdin)

    def end(self):
        """(stdout text, stderr text): what reached fds 1 and 2, each capped
        at OUT_CAP bytes (truncation marked); the real fds come back."""
        # What is still buffered reaches the sinks first, as at a program's
        # exit: the streams, and a plain io stream the code put in their
        # place (open(1, "w")...).
        _flush((sys.stdout, sys.stderr, self.out, self.err, sys.__stdout__, sys.__stderr__))
        texts = []
        size = 0
        for fd in (1, 2):
            sink = self.sinks.get(fd)
            data = b""
            try:
                n = os.fstat(sink).st_size
                if n:
                    size += n
                    data = os.pread(sink, OUT_CAP + 1, 0)
                    os.ftruncate(sink, 0)  # empty for the next request
                    os.lseek(sink, 0, 0)
            except (OSError, TypeError):  # the code closed it: a new one next time
                self.sinks.pop(fd, None)
            text = data[:OUT_CAP].decode("utf-8", "replace")
            texts.append(text + "\n[output truncated]" if len(data) > OUT_CAP else text)
        self.restore()
        if size > self.cap:
            self.on_limit()
        return texts[0], texts[1]

    def restore(self):
        """The runner's own descriptors and streams back."""
        for fd in (1, 2):
            real = self.saved.get(fd)
            try:
                if real is None:
                    os.close(fd)
                else:
                    os.dup2(real, fd)
            except OSError:
                pass
        sys.stdout, sys.stderr, sys.stdin = sys.__stdout__, sys.__stderr__, sys.__stdin__ = self.real


def _flush(streams):
    """Flush the plain io streams among `streams` (never a student object's
    own flush()); errors are ignored, as at exit."""
    import io
    for stream in streams:
        if type(stream) in (io.TextIOWrapper, io.BufferedWriter, io.FileIO):
            try:
                if not stream.closed:
                    stream.flush()
            except BaseException:  # noqa: BLE001  (a student raw layer may raise anything)
                pass


# -- values --------------------------------------------------------------------

class Handles:
    def __init__(self):
        self.objs = {}
        self.next = 1

    def put(self, obj):
        n = self.next
        self.next += 1
        self.objs[n] = obj
        return n


def _safe_repr(obj, cap=2000):
    try:
        text = repr(obj)
        if type(text) is not str:
            text = str.__str__(text)
    except BaseException as exc:  # student __repr__ may raise anything
        text = "<unrepresentable %s: %s>" % (type(obj).__name__, type(exc).__name__)
    return text if len(text) <= cap else text[:cap] + "..."


def encode(v, handles, depth=0):
    """Type-preserving plain data (PROTOCOL.md). Builtin subclasses are read
    through the base type's own slots, so student overrides never run."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(v)
    d = depth + 1
    if v is None or t is bool or t is str:
        return v
    if t is int:
        return v if -(1 << 53) < v < (1 << 53) else {"$int": int.__repr__(v)}
    if t is float:
        if v != v:
            return {"$float": "nan"}
        if v in (float("inf"), float("-inf")):
            return {"$float": "inf" if v > 0 else "-inf"}
        return v
    if t is list:
        return [encode(x, handles, d) for x in v]
    if t is tuple:
        return {"$tuple": [encode(x, handles, d) for x in v]}
    if t is dict:
        if all(type(k) is str and not k.startswith("$") for k in v):
            return {k: encode(x, handles, d) for k, x in v.items()}
        return {"$dict": [[encode(k, handles, d), encode(x, handles, d)] for k, x in v.items()]}
    if t is set or t is frozenset:
        return {"$" + t.__name__: [encode(x, handles, d) for x in v]}
    if t is bytes or t is bytearray:
        import base64
        return {"$bytes": base64.b64encode(bytes(v)).decode()}
    if t is complex:
        return {"$complex": [v.real, v.imag]}
    # Subclasses of builtins: the base value only.
    if isinstance(v, int):
        return encode(int.__int__(v), handles, depth)
    if isinstance(v, float):
        return encode(float.__float__(v), handles, depth)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, bytes):
        return encode(bytes.__bytes__(v), handles, depth)
    if isinstance(v, list):
        return encode(list(list.__iter__(v)), handles, depth)
    if isinstance(v, tuple):
        return encode(tuple(tuple.__iter__(v)), handles, depth)
    if isinstance(v, dict):
        return encode(dict(dict.items(v)), handles, depth)
    if isinstance(v, frozenset):
        return encode(frozenset(frozenset.__iter__(v)), handles, depth)
    if isinstance(v, set):
        return encode(set(set.__iter__(v)), handles, depth)
    return {"$handle": handles.put(v), "type": type(v).__name__, "repr": _safe_repr(v, 500),
            "callable": callable(v)}


def decode(v, handles, depth=0):
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    d = depth + 1
    if isinstance(v, list):
        return [decode(x, handles, d) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) >= 1:
        tag = next(iter(v))
        if tag.startswith("$"):
            x = v[tag]
            if tag == "$tuple":
                return tuple(decode(i, handles, d) for i in x)
            if tag == "$set":
                return set(decode(i, handles, d) for i in x)
            if tag == "$frozenset":
                return frozenset(decode(i, handles, d) for i in x)
            if tag == "$dict":
                return {decode(k, handles, d): decode(i, handles, d) for k, i in x}
            if tag == "$bytes":
                import base64
                return base64.b64decode(x)
            if tag == "$float":
                return float(x)
            if tag == "$int":
                return int(x)
            if tag == "$complex":
                return complex(x[0], x[1])
            if tag == "$handle":
                return handles.objs[x]
            raise ValueError("unknown tag " + tag)
    return {k: decode(i, handles, d) for k, i in v.items()}


# -- errors --------------------------------------------------------------------

def _student_frames(tb):
    """The student's own frames (runner frames and the test expression say
    nothing useful), formatted like Python's tracebacks: file, line, code and
    ^ markers under the failing part. Not with the traceback module: importing
    it (linecache, tokenize, re) costs a sandbox ~10 ms of CPU."""
    out = []
    sources = {}
    prefix = WORKDIR + "/"
    while tb is not None:
        code = tb.tb_frame.f_code
        path = code.co_filename
        if path.startswith(prefix):
            lineno = tb.tb_lineno
            out.append('  File "%s", line %s, in %s\n' % (path[len(prefix):], lineno, code.co_name))
            if path not in sources:
                try:
                    with open(path, "rb") as f:
                        sources[path] = f.read().decode("utf-8", "replace").splitlines()
                except OSError:
                    sources[path] = []
            lines = sources[path]
            line = lines[lineno - 1] if lineno and 0 < lineno <= len(lines) else ""
            if line.strip():
                out.append("    %s\n" % line.strip())
                out.append(_carets(code, tb.tb_lasti, lineno, line))
        tb = tb.tb_next
    return "".join(out)


def _carets(code, lasti, lineno, line):
    """'    ^^^^' under the failing expression when it is not the whole line."""
    try:
        pos = None
        for i, p in enumerate(code.co_positions()):
            if i == lasti // 2:
                pos = p
                break
        if pos is None or None in pos or pos[0] != lineno:
            return ""
        start_line, end_line, col, end_col = pos
        raw = line.encode("utf-8")
        start = len(raw[:col].decode("utf-8", "replace"))
        end = len(raw[:end_col].decode("utf-8", "replace")) if end_line == start_line else len(line.rstrip())
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if end - start >= len(stripped) or end <= start:
            return ""
        return "    " + " " * (start - indent) + "^" * (end - start) + "\n"
    except Exception:  # a best-effort marker: never lose the traceback over it
        return ""


def describe(exc, handles=None):
    t = type(exc)
    try:
        message = str(exc)
        if type(message) is not str:
            message = str.__str__(message)
    except BaseException:
        message = "(the exception's message could not be read)"
    err = {"type": t.__name__, "builtin": t.__module__ == "builtins",
           "message": message[:2000], "traceback": ""}
    if isinstance(exc, SyntaxError):
        err["lineno"] = exc.lineno
        err["offset"] = exc.offset
        err["text"] = (exc.text or "")[:500]
        name = exc.filename or ""
        err["filename"] = name[len(WORKDIR) + 1:] if name.startswith(WORKDIR + "/") else name
        err["message"] = str(exc.msg)[:2000]
    try:
        err["traceback"] = _student_frames(exc.__traceback__)[-4000:]
    except BaseException:
        pass
    try:
        err.update(_locations(exc))
    except BaseException:
        pass
    return err


# -- where the student's code was (for the host's explanations) ------------------
# Only file names and line numbers: the host reads the lines from the files as
# submitted, and checks the names against them.

def _student_site(code):
    path = code.co_filename
    prefix = WORKDIR + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def _locations(exc, keep=20):
    """{"frames": [[file, line], ...] innermost last} of an exception's student
    frames; a RecursionError adds "recursion": the [file, line] repeated most."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        name = _student_site(tb.tb_frame.f_code)
        if name is not None:
            frames.append([name, tb.tb_lineno])
        tb = tb.tb_next
    out = {"frames": frames[-keep:]} if frames else {}
    if frames and isinstance(exc, RecursionError):
        counts = {}
        for name, line in frames:
            counts[(name, line)] = counts.get((name, line), 0) + 1
        (name, line), n = max(counts.items(), key=lambda kv: kv[1])
        if n > 1:
            out["recursion"] = [name, line]
    return out


def stack_sample(frame, keep=20):
    """[[file, line], ...] of the student's frames on a live stack, innermost last."""
    frames = []
    while frame is not None and len(frames) < 200:
        name = _student_site(frame.f_code)
        if name is not None:
            frames.append([name, frame.f_lineno])
        frame = frame.f_back
    frames.reverse()
    return frames[-keep:]


_IMMUTABLE = (int, float, bool, str, type(None))


def _canonical(value):
    """The runner's own encoding of a value (fresh handles), None if it has none;
    compared before and after a call to see whether the call changed it.
    None for an int, float, bool, str or None too: no call changes those in place."""
    if type(value) in _IMMUTABLE:
        return None
    try:
        enc = encode(value, Handles())
        text = json_dumps(enc)
    except BaseException:  # a student object whose encoding fails: not compared
        return None
    return None if '"$handle"' in text else text


def changed_arguments(before, args):
    """Did a call change one of its plain-data arguments in place? `before`
    holds the canonical encodings taken before the call."""
    for snapshot, arg in zip(before, args):
        if snapshot is not None and _canonical(arg) != snapshot:
            return True
    return False


def arm_program_sample(seconds):
    """Program mode: if the program still runs after `seconds`, write where it
    is to stderr (one SAMPLE_MARKER line) and let it go on; the host kills it
    at its limit and explains where it was."""
    import _signal

    def on_alarm(signum, frame):
        try:
            line = SAMPLE_MARKER + json_dumps({"frames": stack_sample(frame)}) + "\n"
            os.write(2, line.encode("utf-8", "replace"))
        except BaseException:
            pass

    _signal.signal(_signal.SIGALRM, on_alarm)
    _signal.setitimer(_signal.ITIMER_REAL, seconds)


# -- requests ------------------------------------------------------------------

class Runner:
    def __init__(self, channel):
        self.channel = channel
        self.handles = Handles()
        self.module = None
        self.current = (None, None)   # (request id, batch index) being served
        self.output = Output(self.output_limit)
        self.sampling = False         # a stack sample is armed (SIGALRM) for the current request
        self.alarm_ready = False
        self.mutated = False          # the watched call of the current expression changed an argument

    def output_limit(self):
        """The student's code printed past the job's output limit: answer the
        current request with that verdict and end the process (the host
        starts a fresh runner)."""
        rid, index = self.current
        msg = {"id": rid, "ok": False, "output_limit": True, "error": {
            "type": "OutputLimit", "builtin": False, "traceback": "",
            "message": "printed more than %d bytes" % self.output.cap}}
        if index is not None:
            msg["index"] = index
        try:
            self.channel.send(msg)
        finally:
            os._exit(3)

    def serve(self):
        while True:
            try:
                req = self.channel.recv()
            except ValueError:
                return 2
            if req is None:
                return 0
            if req.get("op") == "exit":
                self.channel.send({"id": req.get("id"), "ok": True})
                return 0
            self.current = (req.get("id"), None)
            if req.get("op") == "batch":
                self.batch(req)
                continue
            self.channel.send(self.handle(req))

    def captured(self, fn):
        """Run fn with fresh captured stdio; (ok, value-or-exc, out, err)."""
        try:
            self.output.begin()
            value = fn()
            ok = True
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: still the student's fault
            value, ok = exc, False
        finally:
            try:
                out, err = self.output.end()
            except BaseException:
                self.output.restore()
                raise
        return ok, value, out, err

    def handle(self, req):
        rid = req.get("id")
        op = req.get("op")
        self.arm_sample(req.get("sample_after"))
        try:
            fn = getattr(self, "op_" + str(op), None)
            if fn is None:
                return {"id": rid, "ok": False, "error": {"type": "ProtocolError", "builtin": False,
                        "message": "unknown op %r" % (op,), "traceback": ""}}
            reply = fn(req)
        except BaseException as exc:
            reply = {"ok": False, "error": describe(exc)}
        finally:
            self.disarm_sample()
        reply["id"] = rid
        return reply

    # -- stack samples: where code that runs long is (PROTOCOL.md, "sample") ------
    def arm_sample(self, seconds):
        """If the request still runs after `seconds`, send a stack sample (a
        SIGALRM handler); the host keeps it in case it then times out."""
        if type(seconds) not in (int, float) or not 0 < seconds < 3600:
            return
        import _signal
        if not self.alarm_ready:
            _signal.signal(_signal.SIGALRM, self.on_alarm)
            self.alarm_ready = True
        self.sampling = True
        _signal.setitimer(_signal.ITIMER_REAL, float(seconds))

    def disarm_sample(self):
        if self.sampling:
            import _signal
            self.sampling = False   # first: a signal already pending then sends nothing
            _signal.setitimer(_signal.ITIMER_REAL, 0)

    def on_alarm(self, signum, frame):
        if not self.sampling:
            return
        self.sampling = False
        rid, index = self.current
        msg = {"id": rid, "sample": {"frames": stack_sample(frame)}}
        if index is not None:
            msg["index"] = index
        try:
            self.channel.send(msg)
        except BaseException:
            pass

    def watch_call(self, fn, /, *args, **kwargs):
        """`f(a, b)` of an io expression, run as `__xgrader_call__(f, a, b)`:
        the same call, noting whether it changed its arguments in place."""
        values = list(args) + list(kwargs.values())
        before = [_canonical(v) for v in values]
        try:
            return fn(*args, **kwargs)
        finally:
            self.mutated = changed_arguments(before, values)

    def result(self, ok, value, out, err, with_repr=False):
        if not ok:
            return {"ok": False, "error": describe(value), "stdout": out, "stderr": err}
        try:
            enc = encode(value, self.handles)
        except (ValueError, RecursionError) as exc:
            return {"ok": False, "stdout": out, "stderr": err, "error": {
                "type": "ValueError", "builtin": True, "traceback": "",
                "message": "the returned value cannot be sent back: " + str(exc)}}
        reply = {"ok": True, "value": enc, "stdout": out, "stderr": err}
        if with_repr:
            reply["repr"] = _safe_repr(value)
        return reply

    def op_files(self, req):
        import base64
        for rel, data in req["files"].items():
            parts = rel.split("/")
            if rel.startswith("/") or ".." in parts or "\x00" in rel:
                raise ValueError("bad path " + rel)
            path = os.path.join(WORKDIR, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(base64.b64decode(data))
        return {"ok": True}

    def op_load(self, req):
        if isinstance(req.get("output_bytes"), int):
            self.output.cap = req["output_bytes"]
        name = req.get("module", "submission")
        path = os.path.join(WORKDIR, req.get("path", name + ".py"))
        if WORKDIR not in sys.path:
            sys.path.insert(0, WORKDIR)
        with open(path, "rb") as f:
            source = f.read()
        try:
            code = compile(source, path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in source
            return {"ok": False, "error": describe(exc)}
        prelude = load_prelude(req.get("prelude"))
        module = type(sys)(name)
        module.__file__ = path
        sys.modules[name] = module
        self.module = module

        def run():
            if prelude is not None:
                exec(prelude, module.__dict__)
            exec(code, module.__dict__)
        ok, value, out, err = self.captured(run)
        if not ok:
            return {"ok": False, "error": describe(value), "stdout": out, "stderr": err}
        return {"ok": True, "names": self.names(), "stdout": out, "stderr": err}

    def names(self):
        kinds = {}
        for key, val in list(self.module.__dict__.items()):
            if type(key) is not str or key.startswith("__"):
                continue
            try:
                if isinstance(val, type) and issubclass(val, BaseException):
                    kind = "exception"
                elif isinstance(val, type):
                    kind = "class"
                elif callable(val):
                    kind = "function"
                else:
                    kind = "value"
            except BaseException:
                kind = "value"
            kinds[key] = kind
        return kinds

    def target(self, spec):
        if spec is None or spec == "":
            return self.module
        if isinstance(spec, dict):
            obj = self.handles.objs[spec["$handle"]]
            return obj
        obj = self.module
        for part in str(spec).split("."):
            obj = getattr(obj, part)
        return obj

    def op_call(self, req):
        fn = self.target(req["target"])
        if req.get("method"):
            fn = getattr(fn, req["method"])
        args = decode(req.get("args", []), self.handles)
        kwargs = decode(req.get("kwargs", {}), self.handles)
        values = list(args) + list(kwargs.values()) if req.get("watch") else []
        before = [_canonical(v) for v in values]
        reply = self.result(*self.captured(lambda: fn(*args, **kwargs)))
        if values and changed_arguments(before, values):
            reply["mutated"] = True
        return reply

    def op_getattr(self, req):
        obj = self.target(req["handle"] if "handle" in req else req.get("target", ""))
        name = req["name"]
        return self.result(*self.captured(lambda: getattr(obj, name)))

    def op_special(self, req):
        """Builtin protocol on a handle: str, repr, len, bool, list, getitem, contains."""
        obj = self.target(req["target"])
        args = decode(req.get("args", []), self.handles)
        fns = {"str": str, "repr": repr, "len": len, "bool": bool, "list": list,
               "getitem": lambda o, k: o[k], "contains": lambda o, k: k in o}
        fn = fns[req["name"]]
        return self.result(*self.captured(lambda: fn(obj, *args)))

    def evaluate(self, expr):
        code = compile(expr, "<test>", "eval", dont_inherit=True)
        scope = dict(self.module.__dict__) if self.module is not None else {}
        scope["__xgrader_call__"] = self.watch_call
        self.mutated = False
        return self.captured(lambda: eval(code, scope))

    def op_eval(self, req):
        reply = self.result(*self.evaluate(req["expr"]), with_repr=True)
        if self.mutated:
            reply["mutated"] = True
        return reply

    def batch(self, req):
        """One reply per expression as it finishes (the host times each one),
        then a final {done: true}."""
        rid = req.get("id")
        samples = req.get("sample_after")
        # `watched`: the same expressions with their top call as __xgrader_call__(f, ...)
        # (PROTOCOL.md); a runner without watch_call would use `exprs`.
        exprs = req.get("watched") or req.get("exprs", [])
        for index, expr in enumerate(exprs):
            self.current = (rid, index)
            if isinstance(samples, list) and index < len(samples):
                self.arm_sample(samples[index])
            try:
                reply = self.result(*self.evaluate(expr), with_repr=True)
                if self.mutated:
                    reply["mutated"] = True
            except BaseException as exc:
                reply = {"ok": False, "error": describe(exc)}
            finally:
                self.disarm_sample()
            reply["id"] = rid
            reply["index"] = index
            self.channel.send(reply)
        self.channel.send({"id": rid, "ok": True, "done": True})

    # -- image kind: a program run inside the runner, and a file read back -----
    # (the host's image kind: xgrader/handlers/image_kind.py)

    def op_run_main(self, req):
        """Run FILE as __main__ with `stdin` as its input, like `python3 FILE`;
        exit() / sys.exit(0) end it normally. Reply like `load`."""
        path = os.path.join(WORKDIR, req.get("path", "main.py"))
        if WORKDIR not in sys.path:
            sys.path.insert(0, WORKDIR)
        with open(path, "rb") as f:
            source = f.read()
        try:
            code = compile(source, path, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            return {"ok": False, "error": describe(exc)}
        import builtins
        import io
        module = type(sys)("__main__")
        module.__file__ = path
        module.__builtins__ = builtins
        sys.modules["__main__"] = module
        self.module = module
        stdin = io.StringIO(str(req.get("stdin") or ""))

        def run():
            sys.stdin = stdin
            exec(code, module.__dict__)

        ok, value, out, err = self.captured(run)
        if not ok and isinstance(value, SystemExit) and value.code in (None, 0):
            ok = True
        if not ok:
            return {"ok": False, "error": describe(value), "stdout": out, "stderr": err}
        return {"ok": True, "stdout": out, "stderr": err}

    def op_read_file(self, req):
        """A regular file under the work folder, at most `max_bytes`, as base64
        (never through a symlink); `remove` deletes it after reading, so the
        next request cannot find a stale one."""
        import base64
        import errno
        import stat
        rel = str(req.get("path", ""))
        if not rel or rel.startswith("/") or ".." in rel.split("/") or "\x00" in rel:
            raise ValueError("bad path")
        path = os.path.join(WORKDIR, rel)
        cap = int(req.get("max_bytes", 1 << 20))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return {"ok": True, "found": False}
        except OSError as exc:
            why = "a symbolic link" if exc.errno == errno.ELOOP else "unreadable (%s)" % exc.strerror
            return {"ok": True, "found": True, "refused": why}
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return {"ok": True, "found": True, "refused": "not a regular file"}
            if st.st_size > cap:
                return {"ok": True, "found": True, "refused": "too large", "size": st.st_size}
            chunks, size = [], 0
            while size <= cap:
                chunk = os.read(fd, min(1 << 16, cap + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        if req.get("remove"):
            try:
                os.unlink(path)
            except OSError:
                pass
        if size > cap:
            return {"ok": True, "found": True, "refused": "too large", "size": size}
        return {"ok": True, "found": True, "size": size, "data": base64.b64encode(b"".join(chunks)).decode()}


def _report(text):
    """Text for the host on stderr, after the student's own (a closed or
    replaced sys.stderr must not lose a crash description)."""
    try:
        sys.stderr.flush()
    except BaseException:
        pass
    data = text.encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass


def load_prelude(rel):
    """The compiled instructor prelude (assignment.toml `prelude`), or None.
    It runs in the student's module before their code, from its own file,
    so the student's line numbers stay theirs."""
    if not rel:
        return None
    full = os.path.join(WORKDIR, str(rel))
    with open(full, "rb") as f:
        return compile(f.read(), full, "exec", dont_inherit=True)


def exec_main(path, options=()):
    """Program mode: run FILE as __main__; a crash ends with a MARKER line.
    Options: `--prelude FILE`, `--sample-after SECONDS`."""
    import builtins
    opts = dict(zip(options[::2], options[1::2]))
    if WORKDIR not in sys.path:
        sys.path.insert(0, WORKDIR)
    full = os.path.join(WORKDIR, path)
    sys.argv = [path]
    try:
        with open(full, "rb") as f:
            code = compile(f.read(), full, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        _report(MARKER + json_dumps(describe(exc)) + "\n")
        return 1
    module = type(sys)("__main__")
    module.__file__ = full
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    try:
        prelude = load_prelude(opts.get("--prelude"))
        if prelude is not None:
            exec(prelude, module.__dict__)
        if opts.get("--sample-after"):
            arm_program_sample(float(opts["--sample-after"]))
        exec(code, module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        err = describe(exc)
        _report("Traceback (most recent call last):\n" + err["traceback"]
                + err["type"] + ": " + err["message"] + "\n" + MARKER + json_dumps(err) + "\n")
        return 1
    finally:
        try:
            sys.stdout.flush()
        except BaseException:
            pass
    return 0


def add_site_dirs():
    """The sandbox environment's package directories (course packages: the
    sandbox venv, the grading image's site dirs), from SANDBOX_SITE_DIRS set
    by the backend. Appended as plain sys.path entries: Python runs with -S,
    so no site module, no *.pth processing, no sitecustomize/usercustomize (a
    submission shipping any of these gets no code run by them); the student's
    folder stays first."""
    for d in os.environ.pop("SANDBOX_SITE_DIRS", "").split(os.pathsep):
        if d.startswith("/") and d not in sys.path:
            sys.path.append(d)


def add_site_builtins():
    """exit() and quit(), which the site module adds and -S leaves out:
    student programs call them (as sys.exit)."""
    import builtins
    for name in ("exit", "quit"):
        if not hasattr(builtins, name):
            setattr(builtins, name, sys.exit)


def main(argv):
    add_site_dirs()
    fresh_stdio()
    add_site_builtins()
    if len(argv) >= 3 and argv[1] == "exec":
        return exec_main(argv[2], argv[3:])
    spec = os.environ.pop("XGRADER_CHANNEL", "")
    if not spec:
        sys.stderr.write("runner: no XGRADER_CHANNEL\n")
        return 2
    return Runner(Channel(spec)).serve()
