"""Optional features and the pip extras that install them.

The core install runs the main job (bundled queue, daemon, bubblewrap
sandbox). Each optional feature imports its library through :func:`require`,
in the one place that needs it, so a missing extra is one line naming it::

    AI hints need the 'hints' extra: pip install 'xgrader[hints]'

`xgrader` prints that line and exits 2 (xgrader/cli/main.py).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# extra -> what it is for, as the error line says it.
EXTRAS = {
    "hints": "AI hints need",
    "redis": "the redis hint store needs",
    "docker": "the docker sandbox backend needs",
    "postgres": "PostgreSQL storage needs",
    "images": "image assignments need",
    "mastery": "fitting BKT parameters needs",
}


# handler kind -> (library it imports, extra that installs it)
KIND_EXTRAS = {"image": ("PIL", "images")}


class MissingExtra(ImportError):
    """An optional feature was used without its extra installed."""

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        super().__init__(f"{EXTRAS[extra]} the {extra!r} extra: pip install 'xgrader[{extra}]'",
                         name=module)


def require(module: str, extra: str) -> ModuleType:
    """Import `module` (a library of the `extra`), or raise MissingExtra.
    An ImportError from inside an installed library is not hidden."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and (exc.name == module or module.startswith(exc.name + ".")):
            raise MissingExtra(extra, module) from None
        raise


def missing_for_kind(kind: str) -> str | None:
    """The one-line install hint when a handler kind's extra is missing, else None."""
    need = KIND_EXTRAS.get(kind)
    if need is None:
        return None
    try:
        require(*need)
    except MissingExtra as exc:
        return str(exc)
    return None
