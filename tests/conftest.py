"""Shared test configuration: integration tests start the real local stack once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# the platforms' definitions, as every function's bootstrap registers them (the domain and the services ask them)
import chat4all.channels.registry  # noqa: F401
from devstack.template import load_template

# the platform under test and the channels' local servers, for every test directory that asks for them
pytest_plugins = ["tests.support.platform"]


def pytest_configure(config: pytest.Config) -> None:
    # Powertools reads its settings when chat4all.observability is first imported, which test modules may do
    # at collection, before the local stack sets the functions' environment: give it the template's now.
    template = load_template(Path(__file__).resolve().parents[1] / "template.yaml")
    variables = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    for name, value in variables.items():
        if name.startswith("POWERTOOLS_") and isinstance(value, str):
            os.environ.setdefault(name, value)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)
    # the fuzzer creates real users and channels: it runs after every test that counts them
    items.sort(key=lambda item: item.get_closest_marker("fuzz") is not None)
