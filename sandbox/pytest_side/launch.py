"""Test sandbox entry: `python3 -I /opt/xgrader/pytest_side/launch.py DIR...`.

Takes the channel, installs the `submission` proxy from the host's hello,
then runs pytest on the instructor's test folders with the reporter plugin.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
sys.dont_write_bytecode = True

from runner import Channel  # noqa: E402  (the runner's transport, stdlib only)


def main(argv):
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
    from xgrader_plugin import Reporter
    args = [
        *argv[1:], "-q", "-p", "no:cacheprovider", "-p", "no:stepwise",
        "-c", os.path.join(HERE, "pytest.ini"), "--rootdir", os.getcwd(),
        "--tb=short", "-o", "console_output_style=classic",
        # What student code printed is echoed into pytest's capture (capsys
        # sees it); failure reports need not repeat it on this box's stdout.
        "--show-capture=no",
    ]
    try:
        code = pytest.main(args, plugins=[Reporter(session, channel)])
    finally:
        channel.send({"op": "done"})
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
