"""My tests for dates."""

import pytest

from dates import days_in_month, is_leap


@pytest.mark.parametrize("year, leap", [(2024, True), (2023, False), (2022, False), (1900, False),
                                        (2000, True), (2400, True), (2100, False)])
def test_is_leap(year, leap):
    assert is_leap(year) is leap


def test_month_lengths():
    assert [days_in_month(2023, m) for m in range(1, 13)] == [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def test_february_in_a_leap_year():
    assert days_in_month(2024, 2) == 29


@pytest.mark.parametrize("month", [0, 13, -1])
def test_bad_month(month):
    with pytest.raises(ValueError):
        days_in_month(2024, month)
