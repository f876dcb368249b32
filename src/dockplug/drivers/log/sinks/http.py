"""HTTP sinks: Loki's push API (``loki+http://HOST:PORT/loki/api/v1/push``) and Elasticsearch's
bulk API (``elasticsearch+http://HOST:PORT/INDEX``).

Loki: one stream per container and source, labels from the container's name, id, image and the
named labels/env keys; a 2xx (Loki answers 204) takes the batch. Elasticsearch: ``create``
actions to ``POST /_bulk`` (data streams accept only ``create``); the batch fails if the reply
says ``"errors": true``. Neither server is packaged here: the wire shapes are built from their
API documentation and checked against a recording HTTP server in the tests.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from dockplug.drivers.log.sinks._http import Poster
from dockplug.drivers.log.sinks.base import Message, Meta, SinkError, field_name


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace")


def loki_body(meta: Meta, messages: list[Message]) -> bytes:
    base = {"container_name": meta.name, "container_id": meta.id[:12], "image": meta.image,
            "tag": meta.tag}  # fmt: skip
    base.update({field_name(k): v for k, v in meta.labels.items()})
    base.update({field_name(k): v for k, v in meta.env.items()})
    streams: dict[str, list[list[str]]] = {}
    for m in messages:
        streams.setdefault(m.source, []).append([str(m.time_nano), _text(m.line)])
    body: dict[str, Any] = {"streams": [{"stream": dict(base, source=s), "values": v}
                                        for s, v in streams.items()]}  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def bulk_body(index: str, meta: Meta, messages: list[Message]) -> bytes:
    action = json.dumps({"create": {"_index": index}}).encode()
    container: dict[str, Any] = {"id": meta.id, "name": meta.name,
                                 "image": {"name": meta.image, "id": meta.image_id}}  # fmt: skip
    if meta.labels:
        container["labels"] = meta.labels
    if meta.env:
        container["env"] = meta.env
    lines: list[bytes] = []
    for m in messages:
        stamp = datetime.fromtimestamp(m.time_nano / 1e9, UTC).isoformat(timespec="microseconds")
        doc = {"@timestamp": stamp.replace("+00:00", "Z"), "message": _text(m.line),
               "stream": m.source, "tag": meta.tag, "container": container}  # fmt: skip
        lines += (action, json.dumps(doc, separators=(",", ":")).encode())
    return b"\n".join(lines) + b"\n"


class HttpSink:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.kind, _, target = url.partition("+")
        self.poster = Poster(target, timeout)
        if self.kind == "elasticsearch":
            self.index = self.poster.path.strip("/") or "docker-logs"
            if "/" in self.index:
                raise ValueError(f"{url}: expected elasticsearch+http://HOST:PORT/INDEX")

    def send(self, meta: Meta, messages: list[Message]) -> None:
        if self.kind == "loki":
            status, body = self.poster.post(loki_body(meta, messages), "application/json")
            if not 200 <= status < 300:
                raise SinkError(f"loki answered {status}: {body[:200]!r}")
            return
        status, body = self.poster.post(
            bulk_body(self.index, meta, messages), "application/x-ndjson", "/_bulk"
        )
        if not 200 <= status < 300:
            raise SinkError(f"elasticsearch answered {status}: {body[:200]!r}")
        try:
            errors = json.loads(body).get("errors", False)
        except (ValueError, AttributeError):
            raise SinkError(f"elasticsearch answered {body[:200]!r}") from None
        if errors:
            raise SinkError(f"elasticsearch refused entries: {body[:300]!r}")

    def close(self) -> None:
        self.poster.close()
