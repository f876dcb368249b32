"""What a volume driver remembers, and the interface of the store that keeps it.

Interface first, implementations beside it (``sqlite.py`` is the embedded default). A driver
holds every volume in memory for Get/List (dockerd calls them constantly) and writes each
change through the store before it replies, so a reply always describes what a restart finds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class VolumeRecord:
    """What a driver remembers about one volume.

    ``owned`` volumes live in storage the driver created (it may delete their data on Remove);
    others (a user's ``mountpoint``) are only forgotten. ``extra`` is driver-specific.
    """

    name: str
    mountpoint: str
    options: dict[str, Any]
    owned: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class VolumeStore(ABC):
    """Volumes, their mount counts (per mount ID: dockerd's Unmount after a ``--live-restore``
    restart carries the ID from before it), and storage left to free after a Remove."""

    @abstractmethod
    def load(self) -> tuple[list[VolumeRecord], list[tuple[str, str, int]]]:
        """All volumes and all (volume, mount id, count) rows."""

    @abstractmethod
    def put(self, rec: VolumeRecord) -> None:
        """Saves a volume, durably before returning (dockerd is told it exists next)."""

    @abstractmethod
    def delete(self, name: str, trash: str | None = None) -> None:
        """Forgets a volume and its mounts and, in the same transaction, notes ``trash``:
        storage to free afterwards, and again after a crash if need be."""

    @abstractmethod
    def trash(self) -> list[tuple[str, str]]:
        """(path, volume) of storage removed volumes left to free."""

    @abstractmethod
    def forget_trash(self, path: str) -> None: ...

    @abstractmethod
    def set_mount(self, volume: str, mount_id: str, count: int) -> None:
        """The count of one mount ID (0 forgets it)."""

    @abstractmethod
    def clear_mounts(self, volume: str) -> None: ...

    @abstractmethod
    def sync(self) -> None:
        """Makes every change so far durable."""

    @abstractmethod
    def close(self) -> None: ...
