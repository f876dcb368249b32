"""The ``sshfs`` volume driver: remote folders over SSH, secrets kept out of dockerd's replies.

Its registry entry (``dockplug.drivers.registry.SSHFS``) says how it is served and shipped;
the driver itself is in ``driver.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dockplug.drivers.volume.sshfs.driver import (
        DEFAULT_BASE_DIR,
        DEFAULT_MOUNT_TIMEOUT,
        DEFAULT_STATE_DIR,
        SshfsDriver,
    )
    from dockplug.drivers.volume.sshfs.options import SSHFS_OPTIONS

__all__ = [
    "DEFAULT_BASE_DIR",
    "DEFAULT_MOUNT_TIMEOUT",
    "DEFAULT_STATE_DIR",
    "SSHFS_OPTIONS",
    "SshfsDriver",
]


def __getattr__(name: str) -> Any:  # loaded on first use: the registry imports no driver
    if name == "SSHFS_OPTIONS":
        from dockplug.drivers.volume.sshfs.options import SSHFS_OPTIONS

        return SSHFS_OPTIONS
    if name in __all__:
        from dockplug.drivers.volume.sshfs import driver

        return getattr(driver, name)
    raise AttributeError(name)
