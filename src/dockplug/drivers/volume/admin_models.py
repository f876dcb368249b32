"""Wire models of the volume drivers' own maintenance endpoint (``DockplugVolume.Gc``, called
by ``dockplug local gc``), loaded on its first call like every wire model."""

from __future__ import annotations

from typing import Any

from dockplug.protocol.wire import WireModel


class GcRequest(WireModel):
    docker_host: str | None = None


class GcReply(WireModel):
    cleared: dict[str, int]


def gc_reply(result: dict[str, int], _: Any) -> GcReply:
    return GcReply(cleared=result)
