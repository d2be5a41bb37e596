"""What the test side's fork server imports once (sandbox/zygote.py): pytest,
every plugin pytest loads by default, and the proxy and reporter plugin of
this folder, under the module names launch.py imports them by. Library code
only: nothing here reads a test, a submission or the environment, and no
pytest session runs here (each job runs its own `pytest.main`)."""

import os
import sys

import pytest  # noqa: F401
from _pytest import config

for _name in config.default_plugins:
    try:
        __import__("_pytest." + _name)
    except ImportError:  # a plugin this pytest version lacks
        pass
# Imported during a session by the default plugins (debugging, junitxml, faulthandler).
for _name in ("pdb", "faulthandler", "xml.etree.ElementTree", "_pytest.config.compat", "_pytest._argcomplete"):
    try:
        __import__(_name)
    except ImportError:
        pass

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
try:
    import xgrader_proxy  # noqa: F401,E402
    import xgrader_plugin  # noqa: F401,E402
    import xgrader_template  # noqa: F401,E402  (collected sessions: the server routes to them)
finally:
    sys.path.remove(_HERE)
