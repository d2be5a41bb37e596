"""Gregorian calendar helpers (the reference implementation)."""

DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def is_leap(year):
    """True for leap years of the Gregorian calendar."""
    if year % 400 == 0:
        return True
    if year % 100 == 0:
        return False
    return year % 4 == 0


def days_in_month(year, month):
    """Days in `month` (1-12) of `year`."""
    if not 1 <= month <= 12:
        raise ValueError("month must be between 1 and 12")
    return DAYS[month - 1]
