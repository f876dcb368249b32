"""Mount reference counts, kept per volume and per mount ID.

dockerd may Mount the same ID again while it is mounted (``docker cp`` into a running container
reuses the container's ID) and sends one Unmount per Mount, so a set of IDs is wrong: it would
drop to 'unmounted' under a running container. We keep a count per ID.
"""

from __future__ import annotations


class MountTable:
    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}

    def load(self, volume: str, mount_id: str, count: int) -> None:
        if count > 0:
            self._counts.setdefault(volume, {})[mount_id] = count

    def add(self, volume: str, mount_id: str) -> int:
        """Count one more Mount; returns the new count for that ID."""
        ids = self._counts.setdefault(volume, {})
        ids[mount_id] = ids.get(mount_id, 0) + 1
        return ids[mount_id]

    def remove(self, volume: str, mount_id: str) -> int | None:
        """Count one Unmount; returns the ID's remaining count, or None if the ID was unknown."""
        ids = self._counts.get(volume)
        if not ids or mount_id not in ids:
            return None
        left = ids[mount_id] - 1
        if left > 0:
            ids[mount_id] = left
        else:
            del ids[mount_id]
            if not ids:
                del self._counts[volume]
        return max(left, 0)

    def total(self, volume: str) -> int:
        return sum(self._counts.get(volume, {}).values())

    def ids(self, volume: str) -> dict[str, int]:
        return dict(self._counts.get(volume, {}))

    def clear(self, volume: str) -> dict[str, int]:
        return self._counts.pop(volume, {})

    def forget(self, volume: str) -> None:
        self._counts.pop(volume, None)
