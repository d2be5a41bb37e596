from pathlib import Path

# Every tests/support/<area>.py is a plugin: shared fixtures without one big conftest.
pytest_plugins = sorted(
    f"tests.support.{p.stem}" for p in (Path(__file__).parent / "support").glob("*.py") if p.stem != "__init__"
)
