"""The ports, the domain and the services stay pure: no drivers, AWS SDK, HTTP client or Powertools, and no
channel connector module (they reach a platform through `chat4all.ports.ChannelConnector` only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LAYERS = Path(__file__).resolve().parents[2] / "layers"
FORBIDDEN = ("boto3", "botocore", "psycopg", "pymongo", "redis", "httpx", "aws_lambda_powertools")
# what the pure packages may not load, besides FORBIDDEN: the adapters and the connectors (which use httpx)
FORBIDDEN_OWN = ("chat4all.channels", "chat4all.adapters", "chat4all.bootstrap")


def modules_loaded_by(*imports: str) -> list[str]:
    """The forbidden modules a fresh interpreter has loaded after importing `imports` and every module of the
    packages among them."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"for name in {imports!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    for m in pkgutil.iter_modules(getattr(module, '__path__', [])):\n"
        "        importlib.import_module(f'{name}.{m.name}')\n"
        f"print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r}"
        f" or n.startswith({FORBIDDEN_OWN!r}))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(LAYERS)}, capture_output=True, text=True, check=True
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize("package", ["chat4all.ports", "chat4all.domain", "chat4all.services"])
def test_ports_domain_and_services_import_no_infrastructure_and_no_channel_module(package: str) -> None:
    assert modules_loaded_by(package) == []


def test_the_connector_interface_is_a_port_the_channels_implement() -> None:
    from chat4all.channels import registry
    from chat4all.ports import ChannelConnector

    assert all(issubclass(d.connector, ChannelConnector) for d in registry.definitions())


def test_the_guard_sees_what_it_forbids() -> None:
    # the check would pass vacuously if it never saw anything: the connectors do load httpx
    loaded = modules_loaded_by("chat4all.channels")
    assert "httpx" in loaded
    assert "chat4all.channels.http" in loaded
