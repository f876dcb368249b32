"""What every sink shares: the batch it is given, the container fields, the error it raises."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol


class SinkError(Exception):
    """The backend did not take the batch (unreachable, refused, answered an error).

    ``taken``: how many of the batch's first messages it did take before the failure (a
    stream sink knows which frames it handed over whole); the forwarder saves the position
    after them, so only the rest is sent again.
    """

    def __init__(self, message: str, taken: int = 0) -> None:
        super().__init__(message)
        self.taken = taken


@dataclass(slots=True)
class Message:
    """One log line, rejoined if dockerd split it at 16 KiB."""

    time_nano: int
    source: str
    line: bytes
    pieces: int = 1  # FIFO entries it was made of
    truncated: bool = False  # over max-line-size: the rest follows as another message


@dataclass(frozen=True)
class Meta:
    """The container fields a sink adds: id, name, image, tag, and the labels and env keys the
    operator named with ``--log-opt labels=``/``env=``."""

    id: str
    name: str
    image: str
    image_id: str
    tag: str
    labels: dict[str, str]
    env: dict[str, str]

    @classmethod
    def of(cls, info: dict[str, Any], tag: str, labels: tuple[str, ...]) -> Meta:
        name = info.get("name", "")
        fields = {
            "{{.Name}}": name,
            "{{.ID}}": info.get("id", "")[:12],
            "{{.FullID}}": info.get("id", ""),
            "{{.ImageName}}": info.get("image", ""),
            "{{.ImageID}}": info.get("image_id", "")[:19],
        }
        shown = tag or name
        for key, value in fields.items():
            shown = shown.replace(key, value)
        all_labels = info.get("labels", {})
        return cls(
            id=info.get("id", ""),
            name=name,
            image=info.get("image", ""),
            image_id=info.get("image_id", ""),
            tag=shown,
            labels={k: all_labels[k] for k in labels if k in all_labels},
            env=dict(info.get("env", {})),
        )


class Sink(Protocol):
    def send(self, meta: Meta, messages: list[Message]) -> None: ...

    def close(self) -> None: ...


def field_name(key: str, upper: bool = False, limit: int = 64) -> str:
    """KEY reduced to ``[A-Za-z0-9_]``, not starting with a digit (journal, Loki labels)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", key)
    if not name or name[0].isdigit() or name[0] == "_":
        name = "F" + name
    return (name.upper() if upper else name)[:limit]
