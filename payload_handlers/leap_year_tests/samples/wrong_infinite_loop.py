from dates import is_leap


def test_leap():
    assert is_leap(2024)


def test_all_years():
    year = 2000
    while is_leap(2000):       # never ends
        year += 4


def test_not_leap():
    assert not is_leap(2023)
