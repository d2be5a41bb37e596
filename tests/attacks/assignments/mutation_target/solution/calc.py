"""The reference. CANARY_SOLUTION_7f3a91"""
import os


def add(a, b):
    return a + b


def safe_div(a, b):
    if b == 0:
        raise ValueError("division by zero")
    return a / b


class Counter:
    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n


def walk():
    return os.sep
