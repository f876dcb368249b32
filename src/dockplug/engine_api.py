"""The one way dockplug builds a Docker Engine API client (docker SDK): the driver's gc, the
packaging verbs, ``dockplug ls`` and the pytest fixtures all go through :func:`docker_client`.

A top-level module so that drivers and packaging can both use it without importing each other.
Never called while answering dockerd: dockerd may be waiting on that very request.
"""

from __future__ import annotations

import os
from typing import Any

from dockplug.errors import ConfigError

#: Where the docker SDK (and the docker CLI) look when DOCKER_HOST is not set.
DEFAULT_HOST = "unix:///var/run/docker.sock"


class EngineError(ConfigError):
    """An Engine API call failed; the message says why and what to do."""


def docker_client(host: str | None = None, timeout: float = 600) -> Any:
    """A client for HOST (``unix://...``, ``tcp://...``), else for the environment's
    ``DOCKER_HOST`` (and ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``), checked with a ping;
    TIMEOUT is per request, in seconds. Raises :class:`EngineError` when dockerd does not
    answer."""
    import docker

    client = None
    try:
        if host:
            client = docker.DockerClient(base_url=host, timeout=timeout)
        else:
            client = docker.from_env(timeout=timeout)
        client.ping()
    # docker-py lets connection failures through as requests' errors (OSError) too
    except (docker.errors.DockerException, OSError) as exc:
        if client is not None:
            client.close()
        where = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        fix = (
            "start dockerd there or give another host"
            if host
            else ("start dockerd or set DOCKER_HOST")
        )
        raise EngineError(
            f"cannot reach the Docker Engine API at {where} ({type(exc).__name__}: {exc}); "
            f"fix: {fix}"
        ) from exc
    return client
