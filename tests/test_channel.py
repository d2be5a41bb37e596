"""The harness channel's decoder (xgrader/backends/channel.py): nesting is
bounded before json.loads runs, whatever brackets hide inside strings."""

import json
import random

import pytest

from xgrader.backends.channel import MAX_DEPTH, ChannelError, check_depth, decode_message


def nested(rng: random.Random, depth: int):
    value = 1
    for _ in range(depth):
        value = rng.choice([
            [value], {"k": value}, [1, value, "a[{"], {"x]": value},
            ['q"]]]\\', value], {"\\\\": [value, "]]"]}, {"t": "list", "v": [{"t": "int", "v": 2}, value]},
        ])
    return value


def test_decoder_bounds_depth_exactly_like_a_walk_of_the_value():
    rng = random.Random(7)
    for _ in range(2000):
        value = nested(rng, rng.randrange(0, MAX_DEPTH + 20))
        try:
            check_depth(value)
            within = True
        except ChannelError:
            within = False
        line = json.dumps(value).encode()
        if within:
            assert decode_message(line) == value
        else:
            with pytest.raises(ChannelError, match="nested deeper"):
                decode_message(line)


@pytest.mark.parametrize("line", [
    b"[" * 4_000_000,                            # recursion bomb
    b"[" * 70 + b"]" * 70,                       # too deep, balanced
    b'["' + b"]" * 80 + b'", ' + b"[" * 70 + b"1" + b"]" * 71,   # closers hidden in a string
    b'["\\"' + b"]" * 80 + b'", ' + b"[" * 70 + b"1" + b"]" * 71,  # ... behind an escaped quote
    b'{"a": 1',                                  # not JSON
])
def test_hostile_lines_are_refused(line):
    with pytest.raises(ChannelError):
        decode_message(line)


def test_brackets_inside_strings_do_not_count():
    line = json.dumps({"repr": "[" * 500 + "{" * 500, "v": [[1]]}).encode()
    assert decode_message(line)["v"] == [[1]]
