"""The platforms this deployment speaks: the three built-ins, registered when their modules are imported here,
and the modules a deployment names in `CHAT4ALL_CHANNEL_MODULES` (comma-separated, importable from the
functions' path: a layer of its own in AWS), imported by `chat4all.bootstrap` at cold start.

A platform is one module: its connector (`chat4all.ports.ChannelConnector`) and a
`chat4all.domain.platforms.PlatformDefinition` passed to `register` as the module is imported. Nothing else in
the code names a platform: the webhook route is `/webhooks/{platform}`, and the rest asks the definition.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from chat4all.channels import instagram, telegram, whatsapp
from chat4all.domain.platforms import (
    PlatformDefinition,
    UnknownPlatformError,
    by_webhook_path,
    definition,
    definitions,
    names,
    register,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

MODULES_VARIABLE = "CHAT4ALL_CHANNEL_MODULES"
BUILT_IN = (whatsapp.DEFINITION, telegram.DEFINITION, instagram.DEFINITION)


def load_modules(environ: Mapping[str, str] | None = None) -> list[str]:
    """Import the platform modules `CHAT4ALL_CHANNEL_MODULES` names (each registers its definition as it is
    imported); returns the platforms registered after. A module that cannot be imported stops the cold start."""
    spec = (os.environ if environ is None else environ).get(MODULES_VARIABLE, "")
    for module in (name.strip() for name in spec.split(",")):
        if module:
            importlib.import_module(module)
    return names()


__all__ = [
    "BUILT_IN",
    "MODULES_VARIABLE",
    "PlatformDefinition",
    "UnknownPlatformError",
    "by_webhook_path",
    "definition",
    "definitions",
    "load_modules",
    "names",
    "register",
]
