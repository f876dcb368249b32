"""LogDriver: wire models, stream framing, endpoint table and the driver base class.

Reference: plugin-protocol.md §7. Capabilities comes with an empty body and its reply must be
wrapped in ``Cap`` (the documented top-level ``ReadLogs`` is not read). ReadLogs sends
``{"Info", "Config"}`` (not ``ReadConfig``) and its reply is a raw stream of length-prefixed
LogEntry records, the same framing as the FIFO: a 4-byte big-endian length, then the payload.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterable, Iterable
from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field, field_serializer, field_validator

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

_LENGTH = struct.Struct(">I")
MAX_FRAME = 1 << 20
"""FrameReader's default limit: LogEntry lines are split at 16 KiB, so anything this large is a
desynchronised stream, not a message."""


def _null_is_empty(value: Any, empty: Any) -> Any:
    return empty if value is None else value


class Info(WireModel):
    """The container a logger serves. ``Config`` holds every ``--log-opt``, dockerd's own too."""

    config: dict[str, str] = Field(default_factory=dict)
    container_id: str = ""
    container_name: str = ""
    container_entrypoint: str = ""
    container_args: list[str] = Field(default_factory=list)
    container_image_id: str = ""
    container_image_name: str = ""
    container_created: datetime | None = None
    container_env: list[str] = Field(default_factory=list)
    container_labels: dict[str, str] = Field(default_factory=dict)
    log_path: str = ""
    daemon_name: str = ""

    @field_validator("config", "container_labels", mode="before")
    @classmethod
    def _null_map(cls, value: Any) -> Any:
        return _null_is_empty(value, {})

    @field_validator("container_args", "container_env", mode="before")
    @classmethod
    def _null_list(cls, value: Any) -> Any:
        return _null_is_empty(value, [])

    @field_validator("container_created", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_serializer("container_created")
    def _created(self, value: datetime | None) -> str | None:
        return rfc3339(value)


class StartLoggingRequest(WireModel):
    """``File`` is the FIFO as the plugin sees it (``/run/docker/logging/<id>``), new each time.

    Also sent for ``docker logs`` on a stopped container: not every start is a container start.
    """

    file: str
    info: Info = Field(default_factory=Info)


class StopLoggingRequest(WireModel):
    file: str


class ReadConfig(WireModel):
    """``since``/``until``: ``None`` when unset (Go's zero time on the wire); ``tail`` -1: all."""

    since: datetime | None = None
    until: datetime | None = None
    tail: int = -1
    follow: bool = False

    @field_validator("since", "until", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("since", "until")
    @classmethod
    def _zero_is_absent(cls, value: datetime | None) -> datetime | None:
        return None if value is not None and value.year == 1 else value

    @field_serializer("since", "until")
    def _times(self, value: datetime | None) -> str | None:
        return rfc3339(value)


class ReadLogsRequest(WireModel):
    info: Info = Field(default_factory=Info)
    config: ReadConfig = Field(default_factory=ReadConfig)


class Capability(WireModel):
    read_logs: bool = False


class CapabilitiesReply(WireModel):
    cap: Capability = Field(default_factory=Capability)


def frame(payload: bytes) -> bytes:
    """One record of a log stream: 4-byte big-endian length, then the (LogEntry) payload."""
    return _LENGTH.pack(len(payload)) + payload


#: An empty LogEntry, framed: no source and no line, so dockerd shows nothing for it. dockerd
#: reads a follower's stream until it decodes an entry and only then looks whether the
#: ``docker logs -f`` client is still there (daemon/logger/adapter.go, 20.10 to 28): an idle
#: follower yields this now and then so that dockerd closes the connection of a client gone.
EMPTY_ENTRY = frame(b"")


class FrameError(ValueError):
    """The stream cannot be split: a record longer than the limit, or a truncated tail."""


class FrameReader:
    """Splits a byte stream (FIFO reads, a ReadLogs body) into record payloads, incrementally.

    ``feed`` chunks of any size; it returns the payloads completed so far and keeps the rest.
    """

    def __init__(self, max_size: int = MAX_FRAME) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back: a partial length prefix or record."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        payloads: list[bytes] = []
        start = 0
        size = len(self._buffer)
        while size - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer, start)
            if length > self.max_size:
                raise FrameError(f"log record of {length} bytes exceeds {self.max_size}")
            end = start + _LENGTH.size + length
            if end > size:
                break
            payloads.append(bytes(self._buffer[start + _LENGTH.size : end]))
            start = end
        del self._buffer[:start]
        return payloads

    def close(self) -> None:
        """At end of stream: fails if a record was cut short."""
        if self._buffer:
            raise FrameError(f"log stream ends inside a record ({len(self._buffer)} bytes left)")


def _capabilities_reply(
    result: bool | Capability | CapabilitiesReply | None, _: Any
) -> CapabilitiesReply:
    if isinstance(result, CapabilitiesReply):
        return result
    if isinstance(result, Capability):
        return CapabilitiesReply(cap=result)
    return CapabilitiesReply(cap=Capability(read_logs=bool(result)))


def _stream_reply(result: Any, _: Any) -> Any:
    """Framed bytes or an (async) iterable of them, passed through for the server to stream."""
    if isinstance(result, bytes | bytearray | memoryview):
        return bytes(result)
    if isinstance(result, AsyncIterable) or (
        isinstance(result, Iterable) and not isinstance(result, str)
    ):
        return result
    raise TypeError(f"read_logs must return bytes or an iterator of bytes, not {result!r}")


def _ok(_: Any, __: Any) -> ErrReply:
    return ErrReply()


def _fifo(file: str) -> str:
    return file.rsplit("/", 1)[-1][:12]


def _start(req: StartLoggingRequest) -> str:
    return f"ctr={req.info.container_id[:12]} fifo={_fifo(req.file)}"


def _stop(req: StopLoggingRequest) -> str:
    return f"fifo={_fifo(req.file)}"


def _read(req: ReadLogsRequest) -> str:
    return f"ctr={req.info.container_id[:12]}"


LOG = Protocol(
    implements="LogDriver",
    managed_type="docker.logdriver/1.0",
    endpoints=(
        Endpoint(
            "/LogDriver.StartLogging",
            "start_logging",
            StartLoggingRequest,
            _ok,
            lane=Lane.SLOW,
            subject=_start,
        ),
        Endpoint(
            "/LogDriver.StopLogging",
            "stop_logging",
            StopLoggingRequest,
            _ok,
            lane=Lane.SLOW,
            subject=_stop,
        ),
        Endpoint(
            "/LogDriver.Capabilities",
            "log_capabilities",
            Empty,
            _capabilities_reply,
            required=False,
        ),
        Endpoint(
            "/LogDriver.ReadLogs",
            "read_logs",
            ReadLogsRequest,
            _stream_reply,
            required=False,
            lane=Lane.SLOW,
            subject=_read,
            streams=True,
        ),
    ),
)


class LogDriver(Driver):
    """Base class of a logging plugin. Methods may be ``def`` (worker thread) or ``async def``.

    ``start_logging`` should open the FIFO and read it in the background (split it with
    :class:`FrameReader`); ``stop_logging`` should answer promptly and let that reader drain to
    EOF. A plugin that stops reading blocks the container's output.

    ``read_logs`` (only called if capabilities say ``ReadLogs``: by default, when it is
    overridden) returns framed bytes or an iterator / async iterator of them (use :func:`frame`);
    with ``follow`` keep yielding until the client goes away, and while there is nothing new
    yield :data:`EMPTY_ENTRY` every second or so: dockerd notices a gone client only at its
    next entry. dockplug's server closes the stream (its pending step is cancelled, so a
    ``finally`` runs) as soon as dockerd closes the connection.
    """

    metrics_family: ClassVar[str] = "log"

    protocols: ClassVar[tuple[Protocol, ...]] = (LOG,)

    @placeholder
    def start_logging(self, req: StartLoggingRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def stop_logging(self, req: StopLoggingRequest) -> Any:
        raise NotImplementedError

    @nonblocking
    def log_capabilities(self, req: Empty) -> Any:
        """``ReadLogs`` is true when ``read_logs`` is overridden; return a bool to differ."""
        return not getattr(type(self).read_logs, "__dockplug_placeholder__", False)

    @placeholder
    def read_logs(self, req: ReadLogsRequest) -> Any:
        raise NotImplementedError
