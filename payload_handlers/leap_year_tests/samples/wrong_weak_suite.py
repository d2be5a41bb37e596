from dates import days_in_month, is_leap


def test_leap():
    assert is_leap(2024)


def test_not_leap():
    assert not is_leap(2023)


def test_january():
    assert days_in_month(2023, 1) == 31


def test_even_year():
    assert not is_leap(2022)


def test_leap_february():
    assert days_in_month(2024, 2) == 29
