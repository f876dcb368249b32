"""dockplug: write, package, test and run Docker Engine plugins in Python.

Names are imported on first use, so ``dockplug serve`` starts without loading every protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dockplug.lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dockplug.errors import (
        ConfigError,
        Conflict,
        InUse,
        InvalidOption,
        InvalidRequest,
        NotFound,
        PluginError,
        VolumeInUse,
        VolumeNotFound,
    )
    from dockplug.observe import add_secret
    from dockplug.protocol.authz import AuthzPlugin
    from dockplug.protocol.base import Driver, WouldBlock, may_block, nonblocking, try_inline
    from dockplug.protocol.ipam import IpamDriver
    from dockplug.protocol.log import LogDriver
    from dockplug.protocol.metrics import MetricsCollector
    from dockplug.protocol.network import NetworkDriver
    from dockplug.protocol.volume import (
        CreateRequest,
        MountRequest,
        NameRequest,
        Volume,
        VolumeDriver,
    )
    from dockplug.server.runner import ServeOptions, TLSSettings, run, serve_async

_EXPORTS = {
    "Conflict": "dockplug.errors",
    "ConfigError": "dockplug.errors",
    "InUse": "dockplug.errors",
    "InvalidOption": "dockplug.errors",
    "InvalidRequest": "dockplug.errors",
    "NotFound": "dockplug.errors",
    "PluginError": "dockplug.errors",
    "VolumeInUse": "dockplug.errors",
    "VolumeNotFound": "dockplug.errors",
    "AuthzPlugin": "dockplug.protocol.authz",
    "IpamDriver": "dockplug.protocol.ipam",
    "LogDriver": "dockplug.protocol.log",
    "MetricsCollector": "dockplug.protocol.metrics",
    "NetworkDriver": "dockplug.protocol.network",
    "Volume": "dockplug.protocol.volume",
    "VolumeDriver": "dockplug.protocol.volume",
    "CreateRequest": "dockplug.protocol.volume",
    "MountRequest": "dockplug.protocol.volume",
    "NameRequest": "dockplug.protocol.volume",
    "Driver": "dockplug.protocol.base",
    "nonblocking": "dockplug.protocol.base",
    "try_inline": "dockplug.protocol.base",
    "may_block": "dockplug.protocol.base",
    "WouldBlock": "dockplug.protocol.base",
    "add_secret": "dockplug.observe.redaction",
    "ServeOptions": "dockplug.server.runner",
    "TLSSettings": "dockplug.server.runner",
    "run": "dockplug.server.runner",
    "serve_async": "dockplug.server.runner",
}

__all__ = [
    "AuthzPlugin",
    "ConfigError",
    "Conflict",
    "CreateRequest",
    "Driver",
    "InUse",
    "InvalidOption",
    "InvalidRequest",
    "IpamDriver",
    "LogDriver",
    "MetricsCollector",
    "MountRequest",
    "NameRequest",
    "NetworkDriver",
    "NotFound",
    "PluginError",
    "ServeOptions",
    "TLSSettings",
    "Volume",
    "VolumeDriver",
    "VolumeInUse",
    "VolumeNotFound",
    "WouldBlock",
    "__version__",
    "add_secret",
    "may_block",
    "nonblocking",
    "run",
    "serve_async",
    "try_inline",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
