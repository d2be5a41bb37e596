"""The two folders the package ships besides its code: the in-sandbox runner
(the repository's `sandbox/`) and the example assignments (`payload_handlers/`).

A built wheel carries them as package data, `xgrader/_sandbox/` and
`xgrader/_examples/` (pyproject.toml maps the top-level folders there); a
source checkout or an editable install uses the top-level folders in place.
Resolved once, at import, by where this package was imported from.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# Installed name (wheel) -> folder in a source checkout.
_SHIPPED = {"_sandbox": "sandbox", "_examples": "payload_handlers"}


def _folder(installed: str) -> Path:
    # The runner is bind-mounted into sandboxes and handlers are walked as
    # folders: both must be real directories (the wheel is never imported zipped).
    package = Path(str(resources.files("xgrader")))
    inside = package / installed
    return inside if inside.is_dir() else package.parent / _SHIPPED[installed]


RUNNER_DIR: Path = _folder("_sandbox")
"""Host path of the in-sandbox runner (`runner.py`, `zygote.py`, `pytest_side/`)."""

EXAMPLES_DIR: Path = _folder("_examples")
"""Host path of the bundled example assignments (the default handlers root)."""
