"""Every form an LMS sends -> the files placed in the student's sandbox.

Forms (see docs/assignments.md, "Submission forms"):

- ``student_response`` text: becomes the entry file (``assignment.config.entry``).
  A pasted Jupyter notebook (JSON) or marimo notebook is converted like an upload.
- uploaded files (``request.files``, already downloaded): kept under their
  names, which must be plain relative paths.
- ``.zip`` archives: extracted in memory, never to disk. Rejected with a clear
  message: ``..``, absolute or drive paths, backslashes, NUL/newlines in names,
  symlinks, device files, FIFOs, duplicate names (the zip form of a hard link),
  encrypted entries; budgets on the number of files, the bytes actually
  decompressed (read in chunks: the sizes in the header are not trusted) and
  the length of names. One common top-level folder is stripped;
  ``__MACOSX/``, ``.DS_Store`` and ``__pycache__/`` are ignored.
- Jupyter ``.ipynb``: the code cells, in order, as a module. IPython-only lines
  (``%magic``, ``!shell``, ``x = !cmd``) become ``pass`` with the original as a
  comment, and ``%%cell`` magics are commented out whole (``%%time`` and
  ``%%capture`` keep their Python body), so the module imports. A
  ``%%writefile helper.py`` cell adds the file it would have written.
- marimo notebooks (a ``.py`` with ``import marimo`` and ``app = marimo.App()``):
  the top-level imports, the ``with app.setup:`` body, ``@app.function`` and
  ``@app.class_definition`` definitions, and from ``@app.cell`` cells their
  imports, defs and literal constants, as a plain module importable without
  marimo.

The entry file: kept if present; otherwise the one converted notebook, or the
one ``.py`` file, is renamed to it; otherwise a SubmissionError names the file
the assignment expects. Everything here runs on the trusted side, on untrusted
bytes: it only parses (json, ast, zipfile), never executes.
"""

from __future__ import annotations

import ast
import io
import json
import re
import stat
import warnings
import zipfile

import structlog

from xgrader.assignment import Assignment, SubmissionOptions
from xgrader.errors import SubmissionError
from xgrader.job import GradeRequest

log = structlog.get_logger(__name__)

_CHUNK = 64 * 1024
_MAX_DEPTH = 8
_IGNORED_DIRS = {"__MACOSX", "__pycache__"}
_IGNORED_FILES = {".DS_Store", "Thumbs.db"}
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\:]")
_KEEP_CELL_MAGICS = {"time", "capture"}


class _Budget:
    """Bytes and files taken so far, against the assignment's budgets."""

    def __init__(self, opts: SubmissionOptions) -> None:
        self.opts = opts
        self.bytes = 0
        self.files = 0

    def take(self, nbytes: int, what: str) -> None:
        self.bytes += nbytes
        if self.bytes > self.opts.max_bytes:
            raise SubmissionError(f"{what}: the submission is larger than the allowed "
                                  f"{self.opts.max_bytes} bytes (uncompressed).")

    def add_file(self, what: str) -> None:
        self.files += 1
        if self.files > self.opts.max_files:
            raise SubmissionError(f"{what}: the submission has more than the allowed {self.opts.max_files} files.")


# ------------------------------------------------------------------- names

def check_name(name: str, opts: SubmissionOptions, where: str = "upload") -> str:
    """A safe relative POSIX path, or SubmissionError saying what is wrong."""
    shown = repr(name[:80])
    if not name or name.strip() != name:
        raise SubmissionError(f"{where}: the file name {shown} is empty or has surrounding spaces.")
    if len(name) > opts.max_name_chars:
        raise SubmissionError(f"{where}: the file name {shown}... is longer than {opts.max_name_chars} characters.")
    if _BAD_CHARS.search(name):
        raise SubmissionError(f"{where}: the file name {shown} contains a backslash, colon or control "
                              "character (NUL, newline); use plain names.")
    if name.startswith("/"):
        raise SubmissionError(f"{where}: the file name {shown} is an absolute path; only relative paths are allowed.")
    parts = name.split("/")
    if any(p in ("..", ".") for p in parts):
        raise SubmissionError(f"{where}: the file name {shown} contains '..' or '.'; "
                              "files must stay inside the submission folder.")
    if any(p == "" for p in parts[:-1]) or len(parts) > _MAX_DEPTH:
        raise SubmissionError(f"{where}: the file name {shown} has empty or too many folder levels.")
    return name


def _ignored(name: str) -> bool:
    parts = name.rstrip("/").split("/")
    return bool(_IGNORED_DIRS.intersection(parts[:-1])) or parts[-1] in _IGNORED_FILES \
        or parts[-1] in _IGNORED_DIRS or parts[-1].startswith("._")


# --------------------------------------------------------------------- zip

def extract_zip(data: bytes, opts: SubmissionOptions, budget: _Budget, archive: str) -> dict[str, bytes]:
    """Safe in-memory extraction (see the module docstring for the rules)."""
    where = f"zip archive {archive!r}"
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:  # zipfile on hostile bytes raises many kinds (struct, Unicode, Key...)
        raise SubmissionError(f"{where} cannot be opened ({type(exc).__name__}: {str(exc)[:200]}); "
                              "upload a valid .zip file.") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > opts.max_files * 2 + 16:   # directories count too, but not unboundedly
            raise SubmissionError(f"{where} has {len(infos)} entries; at most {opts.max_files} files are allowed.")
        seen: set[str] = set()
        out: dict[str, bytes] = {}
        for info in infos:
            # zipfile cuts names at NUL; the original shows what the archive really holds.
            check_name(info.orig_filename.rstrip("/") or info.orig_filename, opts, where)
            name = info.filename
            key = name.rstrip("/").casefold()
            if key in seen:
                raise SubmissionError(f"{where} contains {name!r} twice; each file may appear only once.")
            seen.add(key)
            # Unix type bits (0 when the archiver stored none: a plain file).
            mode = info.external_attr >> 16
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file (device, FIFO or socket)"
                raise SubmissionError(f"{where}: {name!r} is {kind}; only regular files are allowed.")
            if info.flag_bits & 0x1:
                raise SubmissionError(f"{where}: {name!r} is encrypted; upload an archive without a password.")
            if info.is_dir() or _ignored(name):
                continue
            budget.add_file(where)
            out[name] = _read_entry(zf, info, budget, where)
    return _strip_common_folder(out)


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget, where: str) -> bytes:
    chunks = []
    try:
        with zf.open(info) as fh:
            while chunk := fh.read(_CHUNK):
                budget.take(len(chunk), where)
                chunks.append(chunk)
    except SubmissionError:
        raise
    except Exception as exc:  # BadZipFile, zlib/lzma/bz2 errors, unsupported methods, EOF...
        raise SubmissionError(f"{where}: {info.filename!r} cannot be read "
                              f"({type(exc).__name__}: {str(exc)[:200]}).") from None
    return b"".join(chunks)


def _strip_common_folder(files: dict[str, bytes]) -> dict[str, bytes]:
    """project/a.py, project/b.py -> a.py, b.py (students zip the folder)."""
    tops = {n.split("/", 1)[0] for n in files}
    if len(tops) != 1 or not all("/" in n for n in files):
        return files
    return _strip_common_folder({n.split("/", 1)[1]: v for n, v in files.items()})


# ---------------------------------------------------------------- notebooks

def _magic_free(line: str) -> str:
    stripped = line.lstrip()
    indent = line[: len(line) - len(stripped)]
    if stripped.startswith(("%", "!")) or re.match(r"^[\w.,\s\[\]]+=\s*[%!]", stripped):
        return f"{indent}pass  # xgrader: notebook-only line dropped: {stripped}"
    return line


def _cell_code(source: str, written: dict[str, str]) -> str:
    lines = source.split("\n")
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):
        magic = lines[first].strip()[2:].split()
        body = lines[first + 1:]
        if magic and magic[0] in _KEEP_CELL_MAGICS:
            return "\n".join(_magic_free(ln) for ln in body)
        if magic and magic[0] == "writefile" and len(magic) >= 2:
            # %%writefile [-a] helper.py: the file the notebook would have written.
            text = "\n".join(body) + "\n"
            target = magic[-1]
            written[target] = (written.get(target, "") + text) if "-a" in magic[1:-1] else text
        return "\n".join("# " + ln for ln in lines)
    return "\n".join(_magic_free(ln) for ln in lines)


def notebook_to_module(data: bytes | str, name: str) -> bytes:
    """The code cells of a Jupyter notebook as one importable module."""
    return notebook_files(data, name)[0]


def notebook_files(data: bytes | str, name: str) -> tuple[bytes, dict[str, bytes]]:
    """(the module, the files its `%%writefile` cells write)."""
    import nbformat  # imported here: only notebook submissions pay for it

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        with warnings.catch_warnings():   # e.g. MissingIDFieldWarning: not the student's concern
            warnings.simplefilter("ignore")
            nb = nbformat.reads(text, as_version=4)
    except Exception as exc:  # nbformat raises many kinds (JSON, schema, version)
        raise SubmissionError(f"the notebook {name!r} cannot be read ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); save it again from Jupyter and re-upload.") from None
    parts = []
    written: dict[str, str] = {}
    for number, cell in enumerate(nb.cells, 1):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(source)
        parts.append(f"# --- notebook cell {number} ---\n{_cell_code(str(source), written)}\n")
    code = "\n".join(parts)
    if re.search(r"\bdisplay\(", code) and not re.search(r"^def display\b", code, re.M):
        code = "display = print  # xgrader: IPython's display() outside Jupyter\n" + code
    return code.encode(), {k: v.encode() for k, v in written.items()}


def looks_like_notebook_json(text: str) -> bool:
    head = text.lstrip()[:1]
    if head != "{":
        return False
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and "cells" in obj and "nbformat" in obj


# ------------------------------------------------------------------ marimo

def _is_app_call(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "App"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "marimo")


def _is_marimo(tree: ast.Module) -> bool:
    imports = any(isinstance(n, ast.Import) and any(a.name == "marimo" for a in n.names) for n in tree.body)
    app = any(isinstance(n, ast.Assign) and _is_app_call(n.value)
              and any(isinstance(t, ast.Name) and t.id == "app" for t in n.targets) for n in tree.body)
    return imports and app


def _app_decorator(dec: ast.expr) -> str | None:
    """'function' for @app.function / @app.function(...), etc.; None otherwise."""
    target = dec.func if isinstance(dec, ast.Call) else dec
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "app":
        return target.attr
    return None


def _is_marimo_import(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import):
        return all(a.name == "marimo" or a.name.startswith("marimo.") for a in node.names)
    return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "marimo"


def _is_literal_assign(node: ast.stmt) -> bool:
    if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
        return False
    try:
        ast.literal_eval(node.value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _without_app_decorators(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> ast.stmt:
    node.decorator_list = [d for d in node.decorator_list if _app_decorator(d) is None]
    return node


def marimo_to_module(tree: ast.Module) -> bytes:
    body: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if not _is_marimo_import(node):
                body.append(node)
        elif isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Attribute) and item.context_expr.attr == "setup"
                and isinstance(item.context_expr.value, ast.Name) and item.context_expr.value.id == "app"
                for item in node.items):
            body += [n for n in node.body if not _is_marimo_import(n)]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kinds = {_app_decorator(d) for d in node.decorator_list} - {None}
            if kinds & {"function", "class_definition"}:
                body.append(_without_app_decorators(node))
            elif "cell" in kinds and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # A cell's body: keep what defines importable names, nothing that runs.
                for inner in node.body:
                    if isinstance(inner, (ast.Import, ast.ImportFrom)) and not _is_marimo_import(inner):
                        body.append(inner)
                    elif isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        body.append(inner)
                    elif _is_literal_assign(inner):
                        body.append(inner)
            elif not kinds:
                body.append(node)   # a plain top-level def outside any cell
        # Everything else (app = marimo.App(), __generated_with, `if __name__ ...`) is marimo's.
    module = ast.Module(body=body, type_ignores=[])
    header = "# Converted by xgrader from a marimo notebook: definitions only.\n"
    return (header + ast.unparse(ast.fix_missing_locations(module)) + "\n").encode()


def convert_marimo(data: bytes) -> bytes | None:
    """The plain module for a marimo notebook, or None if `data` is not one
    (not UTF-8, a syntax error - left for the normal explanation - or no App)."""
    if b"marimo" not in data:
        return None
    try:
        tree = ast.parse(data.decode("utf-8"))
    except (UnicodeDecodeError, SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if not _is_marimo(tree):
        return None
    try:
        return marimo_to_module(tree)
    except (RecursionError, MemoryError, ValueError):   # ast.unparse on a pathological tree
        return None


# ---------------------------------------------------------------- the forms

def materialize(request: GradeRequest, assignment: Assignment) -> dict[str, bytes]:
    """The submission's files, keyed by relative path, with the entry file present."""
    cfg = assignment.config
    opts = cfg.submission
    budget = _Budget(opts)
    files: dict[str, bytes] = {}
    notebooks: set[str] = set()
    forms: list[str] = []

    def put(name: str, data: bytes, where: str) -> None:
        if name.casefold() in {n.casefold() for n in files}:
            raise SubmissionError(f"{where}: the file {name!r} is submitted twice.")
        files[name] = data

    for raw_name, data in request.files.items():
        name = check_name(raw_name, opts)
        if name.lower().endswith(".zip"):
            # The archive itself is bounded too, but only what it holds counts toward the total.
            if len(data) > opts.max_bytes:
                raise SubmissionError(f"zip archive {name!r} is larger than the allowed {opts.max_bytes} bytes.")
            forms.append("zip")
            for inner, content in extract_zip(data, opts, budget, name).items():
                put(inner, content, f"zip archive {name!r}")
        else:
            budget.take(len(data), f"upload {name!r}")
            budget.add_file(f"upload {name!r}")
            forms.append("upload")
            put(name, data, f"upload {name!r}")

    def add_written(written: dict[str, bytes], notebook: str) -> None:
        for inner, content in written.items():
            where = f"notebook {notebook!r} (%%writefile)"
            check_name(inner, opts, where)
            budget.take(len(content), where)
            budget.add_file(where)
            put(inner, content, where)

    for name in [n for n in files if n.lower().endswith(".ipynb")]:
        target = name[: -len(".ipynb")] + ".py"
        module, written = notebook_files(files.pop(name), name)
        if target in files:
            raise SubmissionError(f"the notebook {name!r} and the file {target!r} are both submitted; "
                                  "submit only one of them.")
        files[target] = module
        notebooks.add(target)
        forms.append("ipynb")
        add_written(written, name)

    response = request.student_response
    if response.strip():
        budget.take(len(response.encode()), "the answer text")
        if looks_like_notebook_json(response):
            files[cfg.entry], written = notebook_files(response, "the pasted notebook")
            forms.append("ipynb")
            add_written(written, "the pasted notebook")
        else:
            files[cfg.entry] = response.encode()
            forms.append("text")
    elif not files:
        raise SubmissionError("The submission is empty: no code was typed and no file was uploaded.")

    files = _with_entry(files, notebooks, cfg.entry)
    for name, data in list(files.items()):
        if name.endswith(".py"):
            converted = convert_marimo(data)
            if converted is not None:
                files[name] = converted
                forms.append("marimo")
    log.info("submission_materialized", submission_id=request.submission_id, forms=sorted(set(forms)),
             files=len(files), bytes=budget.bytes)
    return files


def _with_entry(files: dict[str, bytes], notebooks: set[str], entry: str) -> dict[str, bytes]:
    if entry in files:
        return files
    py = sorted(n for n in files if n.endswith(".py"))
    converted = sorted(n for n in py if n in notebooks)
    chosen = converted[0] if len(converted) == 1 else py[0] if len(py) == 1 else None
    if chosen is None:
        found = ", ".join(repr(n) for n in py[:10]) or "no Python file"
        raise SubmissionError(f"The grader expects your code in {entry!r}, but the submission has {found}. "
                              f"Name your main file {entry!r} and submit again.")
    files = dict(files)
    files[entry] = files.pop(chosen)
    return files
