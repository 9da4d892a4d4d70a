"""schemathesis (coverage and fuzzing phases, every check) over openapi.yaml against the running platform.

A short run CI can afford: a bounded number of examples per operation, deterministic generation. It runs
last in the session (tests/conftest.py), because the users and channels it creates are real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = os.environ.get("CHAT4ALL_FUZZ_EXAMPLES", "25")
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.mark.fuzz
def test_the_api_keeps_its_document(platform: LocalPlatform, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file", str(ROOT / "tests" / "fuzz" / "schemathesis.toml"),
        "run", str(ROOT / "openapi.yaml"),
        "--url", platform.api_url,
        "--header", f"Authorization: Bearer {platform.admin_api_key}",
        "--phases", "coverage,fuzzing",
        "--checks", "all",
        "--max-examples", MAX_EXAMPLES,
        "--generation-deterministic",
        "--workers", "2",
        "--request-timeout", "30",
        "--no-color",
        "--report", "junit",
        "--report-dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path)
    summary = result.stdout[-20000:]
    assert result.returncode == 0, summary + result.stderr[-5000:]
    # every operation of the document was exercised, by both phases
    document = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    operations = sum(1 for item in document["paths"].values() for method in item if method in HTTP_METHODS)
    assert f"Tested: {operations}\n" in summary, summary
    assert "✅ Coverage" in summary and "✅ Fuzzing" in summary, summary
