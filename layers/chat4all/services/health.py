"""Health of the platform's dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from chat4all.ports import DependencyCheck


@dataclass(frozen=True)
class HealthReport:
    dependencies: dict[str, str]

    @property
    def healthy(self) -> bool:
        return all(state == "UP" for state in self.dependencies.values())


def check_health(checks: Sequence[DependencyCheck]) -> HealthReport:
    states: dict[str, str] = {}
    for check in checks:
        try:
            check.check()
            states[check.name] = "UP"
        except Exception as exc:  # any failure means the dependency is down; the reason is for operators
            states[check.name] = f"DOWN: {type(exc).__name__}: {str(exc)[:200]}"
    return HealthReport(states)
