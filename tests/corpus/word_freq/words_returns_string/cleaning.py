import re


def words(text):
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))
