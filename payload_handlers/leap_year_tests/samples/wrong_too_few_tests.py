from dates import is_leap


def test_everything():
    assert is_leap(2000) and not is_leap(1900) and is_leap(2024) and not is_leap(2022)
