"""Where dockplug-logs forwards entries: syslog (RFC 5424 over TCP/TLS), systemd-journal-remote,
and HTTP (Loki's push API, Elasticsearch's bulk API). A sink is built from a URL; ``send`` takes a
batch of one container's messages and returns only once the backend has them (or raises
SinkError, and the batch is sent again)."""

from __future__ import annotations

from typing import Any

from dockplug.drivers.log.sinks.base import Message, Meta, Sink, SinkError, field_name

__all__ = ["Message", "Meta", "Sink", "SinkError", "field_name", "make_sink"]


def make_sink(url: str, tls: dict[str, Any], timeout: float = 10.0) -> Sink:
    scheme = url.partition("://")[0]
    if scheme.startswith("syslog+"):
        from dockplug.drivers.log.sinks.syslog import SyslogSink

        return SyslogSink(url, tls, timeout)
    if scheme.startswith("journal-remote+"):
        from dockplug.drivers.log.sinks.journal import JournalSink

        return JournalSink(url, timeout)
    from dockplug.drivers.log.sinks.http import HttpSink

    return HttpSink(url, timeout)
