"""dockerd's ``LogEntry`` protobuf (plugin-protocol.md §7.3), encoded and decoded by hand.

Three small proto3 messages do not justify the protobuf runtime as a dependency; this covers
exactly ``entry.proto`` and skips unknown fields, as a proto3 decoder must.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class EntryError(ValueError):
    """The payload is not a valid LogEntry."""


@dataclass
class PartialMetadata:
    last: bool = False
    id: str = ""
    ordinal: int = 0


@dataclass
class LogEntry:
    source: str = ""
    time_nano: int = 0
    line: bytes = b""
    partial: bool = False
    partial_log_metadata: PartialMetadata | None = None
    attrs: list[tuple[str, str]] = field(default_factory=list)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64/int32: two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes(number: int, data: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(data)) + data


def _int(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(value) if value else b""


def encode(entry: LogEntry) -> bytes:
    """The protobuf payload of one entry (proto3: default values are left out)."""
    out = bytearray()
    if entry.source:
        out += _bytes(1, entry.source.encode())
    out += _int(2, entry.time_nano)
    if entry.line:
        out += _bytes(3, entry.line)
    out += _int(4, int(entry.partial))
    meta = entry.partial_log_metadata
    if meta is not None:
        inner = _int(1, int(meta.last)) + (_bytes(2, meta.id.encode()) if meta.id else b"")
        out += _bytes(5, inner + _int(3, meta.ordinal))
    for key, value in entry.attrs:
        out += _bytes(6, _bytes(1, key.encode()) + _bytes(2, value.encode()))
    return bytes(out)


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for every field of one message."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0

    def varint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise EntryError("truncated or overlong varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == _VARINT:
            value = varint()
        elif wire == _LEN:
            size = varint()
            if pos + size > len(data):
                raise EntryError(f"field {number}: {size} bytes announced, {len(data) - pos} left")
            value, pos = data[pos : pos + size], pos + size
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise EntryError(f"field {number}: unsupported wire type {wire}")
        if number == 0:
            raise EntryError("field number 0")
        out.append((number, wire, value))
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: int | bytes, what: str) -> str:
    if not isinstance(value, bytes):
        raise EntryError(f"{what}: expected a length-delimited field")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise EntryError(f"{what}: not UTF-8") from exc


def decode(data: bytes) -> LogEntry:
    """One LogEntry from its payload; unknown fields are skipped."""
    entry = LogEntry()
    for number, wire, value in _fields(data):
        if number == 1:
            entry.source = _text(value, "source")
        elif number == 2 and wire == _VARINT and isinstance(value, int):
            entry.time_nano = _signed(value)
        elif number == 3 and isinstance(value, bytes):
            entry.line = value
        elif number == 4 and isinstance(value, int):
            entry.partial = bool(value)
        elif number == 5 and isinstance(value, bytes):
            meta = PartialMetadata()
            for n, _, v in _fields(value):
                if n == 1 and isinstance(v, int):
                    meta.last = bool(v)
                elif n == 2:
                    meta.id = _text(v, "partial_log_metadata.id")
                elif n == 3 and isinstance(v, int):
                    meta.ordinal = _signed(v) & 0xFFFFFFFF
                    meta.ordinal -= 1 << 32 if meta.ordinal >= 1 << 31 else 0
            entry.partial_log_metadata = meta
        elif number == 6 and isinstance(value, bytes):
            attr = {n: _text(v, "attrs") for n, _, v in _fields(value) if n in (1, 2)}
            entry.attrs.append((attr.get(1, ""), attr.get(2, "")))
    return entry
