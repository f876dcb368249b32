"""systemd-journal-remote: ``POST /upload`` in the journal export format
(``application/vnd.fdo.journal``), answered 202 once the entries are written.

Fields: MESSAGE (binary-safe form, so any byte is allowed), PRIORITY (6 stdout, 3 stderr),
SYSLOG_IDENTIFIER (the tag), CONTAINER_ID / CONTAINER_ID_FULL / CONTAINER_NAME / IMAGE_NAME as
Docker's journald driver names them, CONTAINER_LABEL_* / CONTAINER_ENV_* for the named labels
and env keys, and the entry's time as __REALTIME_TIMESTAMP.
"""

from __future__ import annotations

import struct

from dockplug.drivers.log.sinks._http import Poster
from dockplug.drivers.log.sinks.base import Message, Meta, SinkError, field_name

CONTENT_TYPE = "application/vnd.fdo.journal"


def _field(name: str, value: bytes) -> bytes:
    return name.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"


def export(meta: Meta, messages: list[Message]) -> bytes:
    common = [("CONTAINER_ID", meta.id[:12]), ("CONTAINER_ID_FULL", meta.id),
              ("CONTAINER_NAME", meta.name), ("IMAGE_NAME", meta.image),
              ("SYSLOG_IDENTIFIER", meta.tag)]  # fmt: skip
    common += [("CONTAINER_LABEL_" + field_name(k, True, 48), v) for k, v in meta.labels.items()]
    common += [("CONTAINER_ENV_" + field_name(k, True, 48), v) for k, v in meta.env.items()]
    head = b"".join(_field(k, v.encode()) for k, v in common)
    tails = {src: f"PRIORITY={3 if src == 'stderr' else 6}\nCONTAINER_SOURCE={src}\n".encode()
             + head + b"\n" for src in ("stdout", "stderr")}  # fmt: skip
    pack = struct.pack
    out: list[bytes] = []
    for m in messages:
        out += (
            b"__REALTIME_TIMESTAMP=%d\nMESSAGE\n" % (m.time_nano // 1000),
            pack("<Q", len(m.line)),
            m.line,
            b"\n",
            tails.get(m.source, tails["stdout"]),
        )
    return b"".join(out)


class JournalSink:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        target = url.removeprefix("journal-remote+")
        self.poster = Poster(target, timeout)
        if self.poster.path in ("", "/"):
            self.poster.path = "/upload"

    def send(self, meta: Meta, messages: list[Message]) -> None:
        status, body = self.poster.post(export(meta, messages), CONTENT_TYPE)
        if status not in (200, 202):
            raise SinkError(f"journal-remote answered {status}: {body[:200]!r}")

    def close(self) -> None:
        self.poster.close()
