"""The plugin protocols dockerd speaks: one module per interface, each with its wire models, its
endpoint table (a :class:`~dockplug.protocol.base.Protocol`) and a driver base class."""

from __future__ import annotations

from dockplug.protocol.authz import AUTHZ, AuthzPlugin
from dockplug.protocol.base import Protocol
from dockplug.protocol.ipam import IPAM, IpamDriver
from dockplug.protocol.log import LOG, LogDriver
from dockplug.protocol.metrics import METRICS, MetricsCollector
from dockplug.protocol.network import NETWORK, NetworkDriver
from dockplug.protocol.volume import VOLUME, Volume, VolumeDriver

ALL_PROTOCOLS: tuple[Protocol, ...] = (VOLUME, NETWORK, IPAM, AUTHZ, LOG, METRICS)

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
