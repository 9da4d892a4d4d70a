"""The domain and services stay pure: no drivers, AWS SDK, HTTP client or Powertools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LAYERS = Path(__file__).resolve().parents[2] / "layers"
FORBIDDEN = ("boto3", "botocore", "psycopg", "pymongo", "redis", "httpx", "aws_lambda_powertools")


def test_domain_and_services_import_no_infrastructure() -> None:
    code = (
        "import sys, pkgutil, importlib, chat4all.domain, chat4all.services\n"
        "for pkg in (chat4all.domain, chat4all.services):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
        "import chat4all.ports\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(LAYERS)}, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
