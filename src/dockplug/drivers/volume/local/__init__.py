"""The ``local`` volume driver: persistent folders (optionally size-limited) on this host.

Its registry entry (``dockplug.drivers.registry.LOCAL``) says how it is served and shipped;
the driver itself is in ``driver.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dockplug.drivers.volume.local.driver import (
        DEFAULT_BASE_DIR,
        DEFAULT_STATE_DIR,
        LOCAL_OPTIONS,
        LocalDriver,
    )

__all__ = ["DEFAULT_BASE_DIR", "DEFAULT_STATE_DIR", "LOCAL_OPTIONS", "LocalDriver"]


def __getattr__(name: str) -> Any:  # loaded on first use: the registry imports no driver
    if name in __all__:
        from dockplug.drivers.volume.local import driver

        return getattr(driver, name)
    raise AttributeError(name)
