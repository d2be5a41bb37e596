"""Test sandbox entry: `python3 -I /opt/xgrader/pytest_side/launch.py DIR...`.

Takes the channel, installs the `submission` proxy from the host's hello,
then runs pytest on the instructor's test folders with the reporter plugin.
A job forked from a collected session (xgrader_template.py) never gets
here: it runs the same session from its collected state.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
sys.dont_write_bytecode = True

from runner import Channel  # noqa: E402  (the runner's transport, stdlib only)


def main(argv):
    os.environ.pop("XGRADER_PYTEST_TEMPLATE", None)  # what a collected session would start from
    spec = os.environ.pop("XGRADER_CHANNEL", "")
    if not spec:
        sys.stderr.write("launch: no XGRADER_CHANNEL\n")
        return 2
    channel = Channel(spec)
    hello = channel.recv()
    if not isinstance(hello, dict) or hello.get("op") != "hello":
        return 2
    import xgrader_proxy
    session = xgrader_proxy.install(channel, hello)
    import pytest
    from xgrader_plugin import Reporter, pytest_args
    try:
        code = pytest.main(pytest_args(argv[1:], os.getcwd()), plugins=[Reporter(session, channel)])
    finally:
        channel.send({"op": "done"})
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
