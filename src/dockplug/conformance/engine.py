"""Which Docker Engine a check or a recording is about: its version and Engine API version.

Engines call plugins differently (plugin-protocol.md; test-environment.md lists what 26 and 28
change), so ``dockplug check`` replays the recordings of the engine it will serve and
``dockplug record`` notes the engine it recorded. Asked once, before any plugin call: never
while dockerd waits for an answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dockplug.conformance.replay import DEFAULT_SERIES, engine_series, recording_path


@dataclass(frozen=True)
class EngineInfo:
    version: str  # dockerd's, e.g. '28.5.2'
    api_version: str  # its Engine API's, e.g. '1.51' ('' when given by hand)
    source: str  # where this came from: the DOCKER_HOST asked, or --engine

    @property
    def series(self) -> str:
        return engine_series(self.version)

    def recordings(self) -> str:
        """Whose recordings the replays send: this series' own, or the default's."""
        own = recording_path("volume-cli", self.series, fallback=False)
        if self.series == DEFAULT_SERIES or own.is_file():
            return self.series
        return f"{DEFAULT_SERIES} (no recordings of {self.series})"

    def describe(self) -> str:
        api = f", Engine API {self.api_version}" if self.api_version else ""
        return f"dockerd {self.version}{api} ({self.source}); replays: {self.recordings()}"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "api_version": self.api_version,
            "series": self.series,
            "source": self.source,
            "recordings": self.recordings(),
        }


def detect(timeout: float = 3.0) -> tuple[EngineInfo | None, str]:
    """The engine DOCKER_HOST names (the local dockerd without it), and when none answers,
    why not. Uses the Engine API's /version, which every engine answers unversioned."""
    from dockplug.engine_api import DEFAULT_HOST, docker_client

    host = os.environ.get("DOCKER_HOST", DEFAULT_HOST)
    try:
        client = docker_client(timeout=max(1.0, timeout))
        try:
            data = client.version()
        finally:
            client.close()
    except Exception as exc:
        return None, f"no Engine API answered at {host} ({type(exc).__name__})"
    return EngineInfo(str(data.get("Version", "?")), str(data.get("ApiVersion", "")), host), ""


def given(version: str) -> EngineInfo:
    """--engine VERSION: '28', '28.5.2', '20.10'."""
    return EngineInfo(version, "", "--engine")
