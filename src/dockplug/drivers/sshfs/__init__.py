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
# propagated mount. State, ssh configs and the secrets store live on a host folder of its own
# that survives upgrades (never shared with an sshfs driver run directly on the host); secrets
# for the plugin are stored there with `dockplug secret set NAME --state-dir
# /var/lib/dockplug/managed-sshfs`, and key files placed in it are /mnt/state/... inside.
# The rootfs gets sshfs (which runs ssh) and fusermount on top of python3.
MANAGED = {
    "description": "dockplug sshfs volumes: remote folders over SSH, secrets kept secret",
    "socket": "sshfs.sock",
    "propagated_mount": "/mnt/volumes",
    "state_mount": {
        "source": "/var/lib/dockplug/managed-sshfs", "destination": "/mnt/state",
        "description": "host folder for the state database, secrets store and ssh configs",
    },
    "args": [
        "serve", "sshfs", "--socket", "/run/docker/plugins/sshfs.sock",
        "--base-dir", "/mnt/volumes", "--state-dir", "/mnt/state",
    ],
    "capabilities": ["CAP_SYS_ADMIN"],
    "devices": ["/dev/fuse"],
    "network": "host",
    "packages": ["sshfs", "fuse3", "openssh-client"],
}  # fmt: skip

__all__ = [
    "DEFAULT_BASE_DIR",
    "DEFAULT_MOUNT_TIMEOUT",
    "DEFAULT_STATE_DIR",
    "MANAGED",
    "SSHFS_OPTIONS",
    "SshfsDriver",
]
