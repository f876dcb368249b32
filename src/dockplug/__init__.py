"""dockplug: write, package, test and run Docker Engine plugins in Python."""

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
from dockplug.protocol import (
    AuthzPlugin,
    IpamDriver,
    LogDriver,
    MetricsCollector,
    NetworkDriver,
    Volume,
    VolumeDriver,
)
from dockplug.protocol.base import Driver, nonblocking
from dockplug.protocol.volume import CreateRequest, MountRequest, NameRequest
from dockplug.server.reqlog import add_secret
from dockplug.server.runner import ServeOptions, TLSSettings, run, serve_async

__version__ = "0.1.0"

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
    "__version__",
    "add_secret",
    "nonblocking",
    "run",
    "serve_async",
]
