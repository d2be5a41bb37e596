"""Entry point of the in-sandbox runner: `python3 -I -S runner.py [exec FILE]`.

The runner itself is runner_core.py next to this file. A script is compiled
every time it runs, a module's bytecode is read from __pycache__: importing
the runner saves compiling ~600 lines in every sandbox. The host writes that
bytecode (xgrader.handlers.student.ensure_runner_bytecode); the sandbox only
reads it (read-only bind), and without it Python compiles the source as before.
`from runner import Channel` (the pytest side) keeps working.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
try:
    from runner_core import Channel, Runner, exec_main, main  # noqa: F401
finally:
    # Student code imports from its own folder, never from the runner's.
    if sys.path and sys.path[0] == _HERE:
        del sys.path[0]

if __name__ == "__main__":
    sys.exit(main(sys.argv))
