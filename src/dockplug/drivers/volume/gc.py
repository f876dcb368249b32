"""Clearing mount counts that no running container backs any more.

dockerd does not re-send Mount for running containers after it restarts, and a crashed dockerd
never sends the matching Unmounts, so counts can stay above zero forever and block Remove. The
Engine API tells which volumes running containers really use. It is asked from a maintenance
call or a timer, never from inside a request dockerd made: dockerd may be waiting on that very
request, and calling back into it would deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from dockplug.drivers.volume.refcount import MountTable
from dockplug.engine_api import EngineError, docker_client
from dockplug.errors import PluginError


class Collectable(Protocol):
    """What gc needs of a volume driver (``StatefulVolumeDriver`` is one); a protocol, so that
    the driver's module imports this one and not the other way round."""

    @property
    def volumes(self) -> Iterable[str]: ...

    @property
    def mounts(self) -> MountTable: ...

    def clear_mounts(self, name: str) -> dict[str, int]: ...

    def log(self, message: str) -> None: ...


def engine(docker_host: str | None = None) -> Any:
    """An Engine API client; its failure is a plugin error (the reply to a maintenance call)."""
    try:
        return docker_client(docker_host, timeout=30)
    except EngineError as exc:
        raise PluginError(str(exc)) from exc


def collect(driver: Collectable, docker_host: str | None = None) -> dict[str, int]:
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
