"""What dockerd fixes and every layer of dockplug must agree on: where it looks for plugins,
where it keeps managed ones, and the limits of names and socket paths.

Each fact is defined here once; the server, the client, packaging, the doctor and the CLI
import it (plugin-protocol.md §1 and §6, checked against moby's ``pkg/plugins`` and
``plugin/v2``).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

#: Legacy discovery always looks here first (``pkg/plugins/discovery.go``), whatever dockerd's
#: ``--exec-root`` says; managed plugins' sockets land in ``PLUGIN_DIR/<id>/``.
PLUGIN_DIR = Path("/run/docker/plugins")
#: Then ``.spec``/``.json`` files in these folders, in this order.
SPEC_DIRS = (Path("/etc/docker/plugins"), Path("/usr/lib/docker/plugins"))

#: ``sun_path`` is 108 bytes including the NUL; Go refuses 108 and more.
UNIX_PATH_MAX = 107
#: A managed plugin's socket is ``PLUGIN_DIR/<64-hex id>/NAME``: 85 bytes before NAME.
MANAGED_SOCKET_PREFIX = len(f"{PLUGIN_DIR}/{'0' * 64}/")
#: So the socket name in its config.json may have at most this many bytes.
SOCKET_NAME_MAX = UNIX_PATH_MAX - MANAGED_SOCKET_PREFIX

#: Bytes in one file name (Linux ``NAME_MAX``): a volume name becomes one.
NAME_MAX = 255


def default_socket(name: str) -> Path:
    """Where dockerd dials the legacy plugin NAME first."""
    return PLUGIN_DIR / f"{name}.sock"


def managed_socket(plugin_id: str, socket: str) -> Path:
    """Where dockerd dials an enabled managed plugin (``plugin/v2/plugin.go``: the socket
    named in its config.json, under the runtime folder dockerd bind-mounts into it)."""
    return PLUGIN_DIR / plugin_id / socket


def managed_home(data_root: str | Path, plugin_id: str) -> PurePosixPath:
    """``<data-root>/plugins/<id>``: a managed plugin's config, rootfs and propagated mount."""
    return PurePosixPath(str(data_root)) / "plugins" / plugin_id


def managed_rootfs(data_root: str | Path, plugin_id: str) -> PurePosixPath:
    return managed_home(data_root, plugin_id) / "rootfs"


def managed_propagated_mount(data_root: str | Path, plugin_id: str) -> PurePosixPath:
    """Where a plugin's ``propagatedMount`` shows on the host (``Plugin.ScopedPath``)."""
    return managed_home(data_root, plugin_id) / "propagated-mount"


#: How long a plugin's loop keeps polling its sockets after a reply (µs) before it sleeps. A
#: wake-up from idle costs tens of µs on a VM, most of a lone call's round trip; Go's scheduler
#: spins before it parks for the same reason, and dockerd's calls come in sequences (Get,
#: Mount, Path for one container).
DEFAULT_BUSY_POLL_US = 50
