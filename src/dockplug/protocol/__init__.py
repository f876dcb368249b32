"""The plugin protocols dockerd speaks: one module per interface, each with its wire models, its
endpoint table (a :class:`~dockplug.protocol.base.Protocol`) and a driver base class.

Submodules load on first use: building pydantic models costs start-up time a plugin that
implements one protocol should not pay for the other five.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dockplug.protocol.authz import AUTHZ, AuthzPlugin
    from dockplug.protocol.base import Protocol
    from dockplug.protocol.ipam import IPAM, IpamDriver
    from dockplug.protocol.log import LOG, LogDriver
    from dockplug.protocol.metrics import METRICS, MetricsCollector
    from dockplug.protocol.network import NETWORK, NetworkDriver
    from dockplug.protocol.volume import VOLUME, Volume, VolumeDriver

_EXPORTS = {
    "AUTHZ": "authz",
    "AuthzPlugin": "authz",
    "IPAM": "ipam",
    "IpamDriver": "ipam",
    "LOG": "log",
    "LogDriver": "log",
    "METRICS": "metrics",
    "MetricsCollector": "metrics",
    "NETWORK": "network",
    "NetworkDriver": "network",
    "VOLUME": "volume",
    "Volume": "volume",
    "VolumeDriver": "volume",
}

__all__ = [
    "ALL_PROTOCOLS",
    "AUTHZ",
    "IPAM",
    "LOG",
    "METRICS",
    "NETWORK",
    "VOLUME",
    "AuthzPlugin",
    "IpamDriver",
    "LogDriver",
    "MetricsCollector",
    "NetworkDriver",
    "Volume",
    "VolumeDriver",
]


def __getattr__(name: str) -> Any:
    if name == "ALL_PROTOCOLS":
        protocols: tuple[Protocol, ...] = tuple(
            __getattr__(n) for n in ("VOLUME", "NETWORK", "IPAM", "AUTHZ", "LOG", "METRICS")
        )
        globals()[name] = protocols
        return protocols
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dockplug.protocol' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dockplug.protocol.{module}"), name)
    globals()[name] = value
    return value
