"""Drivers with fixed answers, for tests about the server rather than about storage or
networking: every call succeeds, Mount and Path answer ``/mnt``, List answers ``listed``; the
network driver accepts every call. Tests subclass them to change the one behaviour they are
about."""

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


class FixedNetwork(dockplug.NetworkDriver):
    def create_network(self, req: Any) -> None:
        pass

    def delete_network(self, req: Any) -> None:
        pass

    def create_endpoint(self, req: Any) -> None:
        pass

    def join(self, req: Any) -> None:
        pass

    def leave(self, req: Any) -> None:
        pass

    def delete_endpoint(self, req: Any) -> None:
        pass
