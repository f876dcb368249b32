"""The ``logs`` log driver (``dockplug serve logs``, plugin name ``dockplug-logs``): each
container's output kept in local segments first, ``docker logs`` served from them, and sinks
(syslog, journal-remote, Loki, Elasticsearch) fed from the files.

Its registry entry (``dockplug.drivers.registry.LOGS``) says how it is served and shipped;
the parts: ``fifo`` (one reader per FIFO), ``segments`` (the store), ``readlogs``,
``forwarder`` and ``sinks``, ``state`` (SQLite), ``config`` (the ``--log-opt`` options),
``driver``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dockplug.drivers.log.config import LOG_OPTIONS
    from dockplug.drivers.log.driver import LogsDriver

__all__ = ["LOG_OPTIONS", "LogsDriver"]


def __getattr__(name: str) -> Any:  # loaded on first use: the registry imports no driver
    if name == "LogsDriver":
        from dockplug.drivers.log.driver import LogsDriver

        return LogsDriver
    if name == "LOG_OPTIONS":
        from dockplug.drivers.log.config import LOG_OPTIONS

        return LOG_OPTIONS
    raise AttributeError(name)
