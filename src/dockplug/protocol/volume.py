"""VolumeDriver: endpoint table and the driver base class; the wire models (``Volume``,
``CreateRequest``...) are importable from here too, loaded from ``volume_models`` on first use.

Reference: plugin-protocol.md §3. dockerd calls Get before almost everything (keep it cheap),
sends ``"Opts": null`` for implicit creates, may Mount the same ID twice, and rejects an empty
``CreatedAt``: it is either an RFC 3339 timestamp or absent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from dockplug.lazy import lazy_exports
from dockplug.protocol.base import Driver, Endpoint, Lane, Lazy, Protocol, nonblocking, placeholder

if TYPE_CHECKING:
    from dockplug.protocol.volume_models import CapabilitiesReply as CapabilitiesReply
    from dockplug.protocol.volume_models import Capability as Capability
    from dockplug.protocol.volume_models import CreateRequest as CreateRequest
    from dockplug.protocol.volume_models import GetReply as GetReply
    from dockplug.protocol.volume_models import ListReply as ListReply
    from dockplug.protocol.volume_models import MountReply as MountReply
    from dockplug.protocol.volume_models import MountRequest as MountRequest
    from dockplug.protocol.volume_models import NameRequest as NameRequest
    from dockplug.protocol.volume_models import Volume as Volume
    from dockplug.protocol.wire import Empty

#: the wire models (pydantic) load on first use, from ``protocol/volume_models.py``
MODELS = "dockplug.protocol.volume_models"
_MODEL_NAMES = (
    "Volume", "CreateRequest", "NameRequest", "MountRequest", "MountReply", "GetReply",
    "ListReply", "Capability", "CapabilitiesReply",
)  # fmt: skip


def _m(name: str) -> Lazy:
    return Lazy(MODELS, name)


def _empty() -> Lazy:
    return Lazy("dockplug.protocol.wire", "Empty")


def _name(req: NameRequest) -> str:
    return req.name


SLOW = Lane.SLOW

VOLUME = Protocol(
    implements="VolumeDriver",
    managed_type="docker.volumedriver/1.0",
    endpoints=(
        Endpoint("/VolumeDriver.Create", "create", _m("CreateRequest"), _m("ok_reply"),
                 lane=SLOW, subject=_name),
        Endpoint("/VolumeDriver.Remove", "remove", _m("NameRequest"), _m("ok_reply"),
                 lane=SLOW, subject=_name),
        Endpoint("/VolumeDriver.Mount", "mount", _m("MountRequest"), _m("mount_reply"),
                 lane=SLOW, subject=_name),
        Endpoint("/VolumeDriver.Unmount", "unmount", _m("MountRequest"), _m("ok_reply"),
                 lane=SLOW, subject=_name),
        Endpoint("/VolumeDriver.Path", "path", _m("NameRequest"), _m("path_reply"),
                 subject=_name),
        Endpoint("/VolumeDriver.Get", "get", _m("NameRequest"), _m("get_reply"), subject=_name),
        Endpoint("/VolumeDriver.List", "list", _empty(), _m("list_reply")),
        Endpoint("/VolumeDriver.Capabilities", "capabilities", _empty(),
                 _m("capabilities_reply"), required=False),
    ),
)  # fmt: skip


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


__getattr__ = lazy_exports(__name__, dict.fromkeys(_MODEL_NAMES, MODELS))
