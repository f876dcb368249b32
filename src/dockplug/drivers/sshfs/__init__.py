"""The ``sshfs`` volume driver, and how it ships as the managed plugin ``dockplug/sshfs``."""

from dockplug.drivers.sshfs.driver import (
    DEFAULT_BASE_DIR,
    DEFAULT_MOUNT_TIMEOUT,
    DEFAULT_STATE_DIR,
    SSHFS_OPTIONS,
    SshfsDriver,
)

# For the managed-plugin builder: sshfs needs FUSE (CAP_SYS_ADMIN and /dev/fuse) and the host's
# network (the remote is reached from the host); mounts appear on the host through the
# propagated mount, state and the secrets store live on a host folder that survives upgrades
# (`dockplug secret set` on the host writes there).
MANAGED = {
    "description": "dockplug sshfs volumes: remote folders over SSH, secrets kept secret",
    "socket": "sshfs.sock",
    "propagated_mount": "/mnt/volumes",
    "state_mount": {"source": "/var/lib/dockplug/sshfs", "destination": "/mnt/state"},
    "args": [
        "serve", "sshfs", "--socket", "/run/docker/plugins/sshfs.sock",
        "--base-dir", "/mnt/volumes", "--state-dir", "/mnt/state",
    ],
    "capabilities": ["CAP_SYS_ADMIN"],
    "devices": ["/dev/fuse"],
    "network": "host",
}  # fmt: skip

__all__ = [
    "DEFAULT_BASE_DIR",
    "DEFAULT_MOUNT_TIMEOUT",
    "DEFAULT_STATE_DIR",
    "MANAGED",
    "SSHFS_OPTIONS",
    "SshfsDriver",
]
