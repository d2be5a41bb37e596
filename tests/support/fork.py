"""Run a function in a plain forked child (the daemon's model) and get its
JSON result back; the child's traceback is printed if it raises."""

from __future__ import annotations

import json
import os
import traceback
from typing import Any, Callable


def in_forked_child(fn: Callable[[], Any]) -> Any:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.write(w, json.dumps(fn()).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0, f"forked child failed: {out!r}"
    return json.loads(out)
