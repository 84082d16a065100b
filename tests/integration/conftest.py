import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every suite here starts servers or talks real HTTP: none is the inner loop.
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.slow)
