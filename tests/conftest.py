"""Shared test configuration: integration tests start the real local stack once per session."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)
    # the fuzzer creates real users and channels: it runs after every test that counts them
    items.sort(key=lambda item: item.get_closest_marker("fuzz") is not None)
