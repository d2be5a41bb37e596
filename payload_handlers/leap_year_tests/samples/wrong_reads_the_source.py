# Tries to tell the versions apart by their source instead of their behaviour:
# it earns nothing, because the tests only ever see the module's behaviour.
import inspect
import os

import dates


def source():
    for path in (getattr(dates, "__file__", ""), "dates.py", "/tmp/work/dates.py"):
        try:
            with open(path) as f:
                return f.read()
        except (OSError, TypeError):
            continue
    try:
        return inspect.getsource(dates)
    except (OSError, TypeError):
        return ""


REFERENCE_LINES = ["if year % 400 == 0:", "if year % 100 == 0:", "return year % 4 == 0"]


def test_source_1():
    text = source()
    assert not text or REFERENCE_LINES[0] in text


def test_source_2():
    text = source()
    assert not text or REFERENCE_LINES[1] in text


def test_source_3():
    text = source()
    assert not text or REFERENCE_LINES[2] in text


def test_no_other_files():
    assert not any(name.endswith(".py") and name != "test_dates.py" for name in os.listdir(".")) or True
