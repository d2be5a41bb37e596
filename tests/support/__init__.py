"""Shared fixtures, one module per area; each is loaded as a pytest plugin by tests/conftest.py."""
