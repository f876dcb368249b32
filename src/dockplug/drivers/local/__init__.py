"""The ``local`` volume driver, and how it ships as the managed plugin ``dockplug/local``."""

from dockplug.drivers.local.driver import (
    DEFAULT_BASE_DIR,
    DEFAULT_STATE_DIR,
    LOCAL_OPTIONS,
    LocalDriver,
)

# For the managed-plugin builder: inside the plugin, volumes live under the propagated mount
# (so dockerd sees them on the host) and state on a bind-mounted host folder that survives
# upgrades. The socket name stays within the 22 bytes a managed plugin allows.
MANAGED = {
    "description": "dockplug local volumes: persistent, crash-safe, size limits",
    "socket": "local.sock",
    "propagated_mount": "/mnt/volumes",
    # its own state folder: never shared with a local driver run directly on the host
    "state_mount": {"source": "/var/lib/dockplug/managed-local", "destination": "/mnt/state"},
    "args": [
        "serve", "local", "--socket", "/run/docker/plugins/local.sock",
        "--base-dir", "/mnt/volumes", "--state-dir", "/mnt/state",
    ],
    "capabilities": ["CAP_SYS_ADMIN"],  # loop mounts for size limits
    "devices": ["/dev/loop-control"],
}  # fmt: skip

__all__ = ["DEFAULT_BASE_DIR", "DEFAULT_STATE_DIR", "LOCAL_OPTIONS", "MANAGED", "LocalDriver"]
