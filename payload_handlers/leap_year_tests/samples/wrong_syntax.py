from dates import is_leap

def test_leap()
    assert is_leap(2024)
