"""Reading the TOML files an assignment folder and the handlers root hold,
with errors that name the file and the field (AssignmentError)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from xgrader.errors import AssignmentError


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AssignmentError(f"{path}: file missing") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AssignmentError(f"{path}: not valid TOML ({exc})") from None


def where(exc: ValidationError) -> str:
    """The first few validation errors as `field a.b: message`."""
    msgs = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        msgs.append(f"field {loc}: {err.get('msg', 'invalid')}")
    return "; ".join(msgs)
