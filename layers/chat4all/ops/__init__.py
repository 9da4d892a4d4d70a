"""Operator tools: backup and restore of both databases (`backup`, `restore`), the cross-database consistency
check (`consistency`). Each is a CLI (`python -m chat4all.ops.<name>`); none runs in a request's path."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping


def database_env(program: str, environ: Mapping[str, str] | None, note: str = "") -> dict[str, str] | None:
    """`environ` (this process's environment when None) when it names both databases, DATABASE_URL and
    MONGODB_URI; None when it does not, having told stderr what `program` lacks (`note` added)."""
    env = dict(os.environ if environ is None else environ)
    missing = [name for name in ("DATABASE_URL", "MONGODB_URI") if not env.get(name)]
    if missing:
        print(f"{program}: set {', '.join(missing)}{note}", file=sys.stderr)
        return None
    return env
