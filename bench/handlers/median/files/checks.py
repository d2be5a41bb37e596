def raises(fn, *args):
    """Name of the exception fn(*args) raises, or None."""
    try:
        fn(*args)
    except Exception as exc:
        return type(exc).__name__
    return None
