"""A volume driver with fixed answers, for tests about the server rather than about storage:
every call succeeds, Mount and Path answer ``/mnt``, List answers ``listed``. Tests subclass it
to change the one behaviour they are about."""

from __future__ import annotations

from typing import Any, ClassVar

import dockplug
from dockplug.protocol.base import Empty


class FixedVolumes(dockplug.VolumeDriver):
    listed: ClassVar[list[str]] = []

    def create(self, req: Any) -> None:
        pass

    def remove(self, req: Any) -> None:
        pass

    def mount(self, req: Any) -> str:
        return "/mnt"

    def unmount(self, req: Any) -> None:
        pass

    def path(self, req: Any) -> str:
        return "/mnt"

    def get(self, req: Any) -> dockplug.Volume:
        return dockplug.Volume(name=req.name)

    def list(self, req: Empty) -> list[dockplug.Volume]:
        return [dockplug.Volume(name=name) for name in self.listed]
