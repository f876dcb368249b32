"""dockerd's ``LogEntry`` records (plugin-protocol.md §7.3): what a log driver reads from the FIFO
and writes back in ReadLogs, each payload framed by :func:`dockplug.protocol.log.frame`.

The wire work is the protobuf runtime's; the message types are built here from a descriptor of
moby's ``entry.proto`` (no generated code, no protoc), and plugins see plain dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, EncodeError


class EntryError(ValueError):
    """The payload is not a valid LogEntry."""


@dataclass
class PartialMetadata:
    """Set on the pieces of a line longer than dockerd's 16 KiB copy buffer."""

    last: bool = False
    id: str = ""
    ordinal: int = 0


@dataclass
class LogEntry:
    source: str = ""  # "stdout" or "stderr"
    time_nano: int = 0
    line: bytes = b""  # without its trailing newline
    partial: bool = False
    partial_log_metadata: PartialMetadata | None = None
    attrs: list[tuple[str, str]] = field(default_factory=list)


def _message_classes() -> tuple[Any, Any, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="dockplug/logdriver/entry.proto", package="dockplug.logdriver", syntax="proto3"
    )
    f = descriptor_pb2.FieldDescriptorProto
    shapes: dict[str, list[tuple[str, int, int, str]]] = {
        "LogEntry": [
            ("source", 1, f.TYPE_STRING, ""),
            ("time_nano", 2, f.TYPE_INT64, ""),
            ("line", 3, f.TYPE_BYTES, ""),
            ("partial", 4, f.TYPE_BOOL, ""),
            (
                "partial_log_metadata",
                5,
                f.TYPE_MESSAGE,
                ".dockplug.logdriver.PartialLogEntryMetadata",
            ),
            ("attrs", 6, f.TYPE_MESSAGE, ".dockplug.logdriver.LogAttr"),
        ],
        "PartialLogEntryMetadata": [
            ("last", 1, f.TYPE_BOOL, ""),
            ("id", 2, f.TYPE_STRING, ""),
            ("ordinal", 3, f.TYPE_INT32, ""),
        ],
        "LogAttr": [("key", 1, f.TYPE_STRING, ""), ("value", 2, f.TYPE_STRING, "")],
    }
    for message, fields in shapes.items():
        msg = fdp.message_type.add(name=message)
        for name, number, kind, type_name in fields:
            label = f.LABEL_REPEATED if name == "attrs" else f.LABEL_OPTIONAL
            fd = msg.field.add(name=name, number=number, type=kind, label=label)
            if type_name:  # only message fields name a type (even "" would count as set)
                fd.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"dockplug.logdriver.{m}"))
        for m in shapes
    )


_LogEntryPb, _PartialPb, _AttrPb = _message_classes()


def encode(entry: LogEntry) -> bytes:
    """The protobuf payload of one entry (proto3: default values are left out)."""
    pb = _LogEntryPb(
        source=entry.source, time_nano=entry.time_nano, line=entry.line, partial=entry.partial
    )
    meta = entry.partial_log_metadata
    if meta is not None:
        pb.partial_log_metadata.CopyFrom(
            _PartialPb(last=meta.last, id=meta.id, ordinal=meta.ordinal)
        )
    for key, value in entry.attrs:
        pb.attrs.append(_AttrPb(key=key, value=value))
    try:
        return bytes(pb.SerializeToString())
    except (EncodeError, ValueError) as exc:
        raise EntryError(f"cannot encode the entry: {exc}") from exc


def decode(data: bytes) -> LogEntry:
    """One LogEntry from its payload; unknown fields are skipped, as proto3 requires."""
    pb = _LogEntryPb()
    try:
        pb.ParseFromString(data)
    except DecodeError as exc:
        raise EntryError(f"not a LogEntry: {exc}") from exc
    meta = None
    if pb.HasField("partial_log_metadata"):
        m = pb.partial_log_metadata
        meta = PartialMetadata(last=m.last, id=m.id, ordinal=m.ordinal)
    return LogEntry(
        source=pb.source,
        time_nano=pb.time_nano,
        line=bytes(pb.line),
        partial=pb.partial,
        partial_log_metadata=meta,
        attrs=[(a.key, a.value) for a in pb.attrs],
    )
