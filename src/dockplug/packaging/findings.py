"""What the doctor reports: one finding per problem, with its check id, level and fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    check: str  # a short id, e.g. "entrypoint-missing"
    level: str  # "error", "warning" or "info"
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.level}: [{self.check}] {self.message}; fix: {self.fix}"


def _get(data: Any, *keys: str) -> Any:
    """Case-insensitive lookup, as dockerd decodes config.json."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = next((v for k, v in data.items() if str(k).lower() == key.lower()), None)
    return data


# -- shared libraries ------------------------------------------------------------------------
