import re


def words(text):
    found = re.findall(r"[a-z0-9]+", text.lower())
    return eval(repr(found))
