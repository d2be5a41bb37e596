import re


def words(text):
    """The lower-case words (runs of letters or digits) of text, in order."""
    return re.findall(r"[a-z0-9]+", text.lower())
