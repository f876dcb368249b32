"""VolumeDriver's wire models and reply builders (pydantic), loaded on the first call that
parses a body or encodes a reply: ``protocol/volume.py`` names them lazily, so a volume plugin
answers ``Plugin.Activate`` before pydantic is imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import field_serializer, field_validator

from dockplug.errors import VolumeNotFound
from dockplug.protocol.base import rfc3339
from dockplug.protocol.wire import ErrReply, WireModel


class Volume(WireModel):
    """One volume as Get and List report it."""

    name: str
    mountpoint: str | None = None
    created_at: datetime | None = None
    status: dict[str, Any] | None = None

    @field_validator("created_at", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_serializer("created_at")
    def _rfc3339(self, value: datetime | None) -> str | None:
        return rfc3339(value)


class CreateRequest(WireModel):
    name: str
    opts: dict[str, str] | None = None

    @property
    def options(self) -> dict[str, str]:
        """``Opts`` with ``null`` read as no options."""
        return self.opts or {}


class NameRequest(WireModel):
    name: str


class MountRequest(WireModel):
    name: str
    id: str = ""


class MountReply(WireModel):
    mountpoint: str


class GetReply(WireModel):
    volume: Volume


class ListReply(WireModel):
    volumes: list[Volume]


class Capability(WireModel):
    scope: Literal["local", "global"] = "local"


class CapabilitiesReply(WireModel):
    capabilities: Capability


def mount_reply(result: str | MountReply, _: Any = None) -> MountReply:
    return result if isinstance(result, MountReply) else MountReply(mountpoint=str(result))


def path_reply(result: str | MountReply | None, _: Any) -> MountReply:
    return mount_reply("" if result is None else result)


def get_reply(result: Volume | None, req: NameRequest) -> GetReply:
    if result is None:
        raise VolumeNotFound(req.name)
    return GetReply(volume=result)


def list_reply(result: Iterable[Volume], _: Any) -> ListReply:
    return ListReply(volumes=list(result))


def capabilities_reply(result: str | Capability | None, _: Any) -> CapabilitiesReply:
    if isinstance(result, Capability):
        return CapabilitiesReply(capabilities=result)
    return CapabilitiesReply(capabilities=Capability.model_validate({"Scope": result or "local"}))


def ok_reply(_: Any, __: Any) -> ErrReply:
    return ErrReply()
