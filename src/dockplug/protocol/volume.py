"""VolumeDriver: wire models, endpoint table and the driver base class.

Reference: plugin-protocol.md §3. dockerd calls Get before almost everything (keep it cheap),
sends ``"Opts": null`` for implicit creates, may Mount the same ID twice, and rejects an empty
``CreatedAt``: it is either an RFC 3339 timestamp or absent.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import field_serializer, field_validator

from dockplug.errors import VolumeNotFound
from dockplug.protocol.base import (
    Driver,
    Empty,
    Endpoint,
    ErrReply,
    Lane,
    Protocol,
    WireModel,
    nonblocking,
    placeholder,
    rfc3339,
)


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


def _mount_reply(result: str | MountReply, _: Any = None) -> MountReply:
    return result if isinstance(result, MountReply) else MountReply(mountpoint=str(result))


def _path_reply(result: str | MountReply | None, _: Any) -> MountReply:
    return _mount_reply("" if result is None else result)


def _get_reply(result: Volume | None, req: NameRequest) -> GetReply:
    if result is None:
        raise VolumeNotFound(req.name)
    return GetReply(volume=result)


def _list_reply(result: Iterable[Volume], _: Any) -> ListReply:
    return ListReply(volumes=list(result))


def _capabilities_reply(result: str | Capability | None, _: Any) -> CapabilitiesReply:
    if isinstance(result, Capability):
        return CapabilitiesReply(capabilities=result)
    return CapabilitiesReply(capabilities=Capability.model_validate({"Scope": result or "local"}))


def _ok(_: Any, __: Any) -> ErrReply:
    return ErrReply()


def _name(req: NameRequest) -> str:
    return req.name


SLOW = Lane.SLOW

VOLUME = Protocol(
    implements="VolumeDriver",
    managed_type="docker.volumedriver/1.0",
    endpoints=(
        Endpoint("/VolumeDriver.Create", "create", CreateRequest, _ok, lane=SLOW, subject=_name),
        Endpoint("/VolumeDriver.Remove", "remove", NameRequest, _ok, lane=SLOW, subject=_name),
        Endpoint(
            "/VolumeDriver.Mount", "mount", MountRequest, _mount_reply, lane=SLOW, subject=_name
        ),
        Endpoint("/VolumeDriver.Unmount", "unmount", MountRequest, _ok, lane=SLOW, subject=_name),
        Endpoint("/VolumeDriver.Path", "path", NameRequest, _path_reply, subject=_name),
        Endpoint("/VolumeDriver.Get", "get", NameRequest, _get_reply, subject=_name),
        Endpoint("/VolumeDriver.List", "list", Empty, _list_reply),
        Endpoint(
            "/VolumeDriver.Capabilities", "capabilities", Empty, _capabilities_reply, required=False
        ),
    ),
)


class VolumeDriver(Driver):
    """Base class of a volume plugin. Each method may be ``def`` (runs in a worker thread) or
    ``async def`` (runs on the event loop); raise a :class:`dockplug.PluginError` to fail a call.

    ``mount`` and ``path`` return the host directory (for a managed plugin, a path under its
    ``propagatedMount``); ``get`` returns a :class:`Volume` or raises ``VolumeNotFound``.
    """

    metrics_family: ClassVar[str] = "volume"

    protocols: ClassVar[tuple[Protocol, ...]] = (VOLUME,)

    @placeholder
    def create(self, req: CreateRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def remove(self, req: NameRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def mount(self, req: MountRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def unmount(self, req: MountRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def path(self, req: NameRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def get(self, req: NameRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def list(self, req: Empty) -> Any:
        raise NotImplementedError

    @nonblocking
    def capabilities(self, req: Empty) -> Any:
        """Scope ``local`` unless overridden; ``global`` means shared storage across hosts."""
        return "local"
