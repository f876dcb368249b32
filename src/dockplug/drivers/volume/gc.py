"""Clearing mount counts that no running container backs any more.

dockerd does not re-send Mount for running containers after it restarts, and a crashed dockerd
never sends the matching Unmounts, so counts can stay above zero forever and block Remove. The
Engine API tells which volumes running containers really use. It is asked from a maintenance
call or a timer, never from inside a request dockerd made: dockerd may be waiting on that very
request, and calling back into it would deadlock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dockplug.drivers.volume.refcount import MountTable
from dockplug.errors import PluginError


class MountHolder(Protocol):
    """What gc needs of a driver: its volumes, their counts, a way to clear them, its log."""

    volumes: dict[str, Any]
    mounts: MountTable
    log: Callable[[str], None]

    def clear_mounts(self, name: str) -> dict[str, int]: ...


def engine(docker_host: str | None = None) -> Any:
    import docker

    try:
        if docker_host:
            return docker.DockerClient(base_url=docker_host, timeout=30)
        return docker.from_env(timeout=30)
    except docker.errors.DockerException as exc:
        raise PluginError(f"cannot reach the Docker Engine API: {exc}") from exc


def collect(driver: MountHolder, docker_host: str | None = None) -> dict[str, int]:
    """Clear the mount IDs of volumes no running container uses; returns what was cleared."""
    import docker

    in_use = [name for name in list(driver.volumes) if driver.mounts.total(name)]
    if not in_use:
        return {}
    api = engine(docker_host)
    cleared: dict[str, int] = {}
    try:
        for name in in_use:
            try:
                running = api.containers.list(filters={"volume": name})
            # docker-py lets connection failures through as requests' errors (OSError)
            except (docker.errors.DockerException, OSError) as exc:
                raise PluginError(f"Engine API: listing containers failed: {exc}") from exc
            if running:
                continue
            ids = driver.clear_mounts(name)
            if ids:
                cleared[name] = sum(ids.values())
                driver.log(
                    f"gc: {name} had {cleared[name]} mount(s) by {len(ids)} id(s) but no "
                    "running container uses it; cleared"
                )
    finally:
        api.close()
    return cleared
