"""The Engine API's managed-plugin calls (docker SDK, ``DOCKER_HOST`` honoured), with errors that
say what to do. The verbs that run the doctor when they fail (create, enable, install) are in
:mod:`dockplug.packaging.verbs`, above both this module and the doctor."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockplug.engine_api import EngineError as EngineError  # the verbs' error, re-exported
from dockplug.engine_api import docker_client
from dockplug.facts import managed_propagated_mount, managed_rootfs, managed_socket
from dockplug.server.discovery import HostPaths, PluginAddress


def connect(timeout: int = 600) -> Any:
    """A docker SDK client from the environment (DOCKER_HOST and friends)."""
    return docker_client(timeout=timeout)


def is_local(client: Any) -> bool:
    """Whether dockerd runs on this machine (a unix socket), so its files can be looked at."""
    base = str(getattr(client.api, "base_url", ""))
    return base.startswith("http+docker://localhost") or "unix" in base


def unix_socket(client: Any) -> str | None:
    """The path of the unix socket CLIENT talks to dockerd on (None: TCP, SSH...)."""
    adapter = getattr(client.api, "_custom_adapter", None)  # the docker SDK's UnixHTTPAdapter
    path = getattr(adapter, "socket_path", None)
    return path if isinstance(path, str) and path.startswith("/") else None


def data_root(client: Any) -> str:
    return str(client.info().get("DockerRootDir", "/var/lib/docker"))


def explain(exc: Exception) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text)


def get_plugin(client: Any, name: str) -> Any:
    import docker.errors

    try:
        return client.plugins.get(name)
    except docker.errors.NotFound as exc:
        raise EngineError(
            f"no plugin {name!r} installed; fix: dockplug create {name} BUNDLE (see docker "
            "plugin ls)"
        ) from exc
    except docker.errors.APIError as exc:
        raise EngineError(f"{name}: {explain(exc)}") from exc


def plugin_socket(plugin: Any) -> Path:
    """Where an enabled managed plugin's socket is on the host (its config's socket name)."""
    socket = ((plugin.attrs.get("Config") or {}).get("Interface") or {}).get("Socket")
    return managed_socket(str(plugin.id), str(socket))


@dataclass(frozen=True)
class ManagedTarget:
    """Where an enabled managed plugin answers, and where the paths it returns are on the
    host: dockerd reads a managed plugin's Mountpoint inside the plugin's rootfs."""

    address: PluginAddress
    host_paths: HostPaths


def managed_target(name: str, client: Any = None) -> ManagedTarget:
    client = client or connect()
    plugin = get_plugin(client, name)
    if not is_local(client):
        raise EngineError(f"{plugin.name}: dockerd is on another host; its socket is out of reach")
    if not plugin.enabled:
        raise EngineError(f"{plugin.name} is disabled; fix: dockplug enable {plugin.name}")
    sock = plugin_socket(plugin)
    address = PluginAddress(plugin.name, f"unix://{sock}", f"managed plugin {plugin.id[:12]}")
    root = data_root(client)
    propagated = str((plugin.attrs.get("Config") or {}).get("PropagatedMount") or "")
    paths = HostPaths(
        str(managed_rootfs(root, plugin.id)),
        propagated,
        str(managed_propagated_mount(root, plugin.id)),
    )
    return ManagedTarget(address, paths)


def disable(name: str, force: bool = False, client: Any = None) -> None:
    import docker.errors

    client = client or connect()
    plugin = get_plugin(client, name)
    if not plugin.enabled:
        raise EngineError(f"{plugin.name} is already disabled")
    try:
        plugin.disable(force=force)
    except docker.errors.APIError as exc:
        text = explain(exc)
        fix = ""
        if "in use" in text:
            fix = (
                "; fix: remove the volumes made with it (docker volume ls -f "
                f"driver={plugin.name}), or use --force"
            )
        raise EngineError(f"disabling {plugin.name}: {text}{fix}") from exc


def remove(name: str, force: bool = False, client: Any = None) -> None:
    import docker.errors

    client = client or connect()
    plugin = get_plugin(client, name)
    try:
        plugin.remove(force=force)
    except docker.errors.APIError as exc:
        text = explain(exc)
        fix = ""
        if "enabled" in text:
            fix = f"; fix: dockplug disable {plugin.name} first, or use --force"
        elif "in use" in text:
            fix = "; fix: remove the volumes made with it first, or use --force"
        raise EngineError(f"removing {plugin.name}: {text}{fix}") from exc


def check_pairs(pairs: list[str]) -> None:
    """Refuse settings that are not ``KEY=VALUE``."""
    for pair in pairs:
        if "=" not in pair or pair.startswith("="):
            raise EngineError(f"{pair!r} is not KEY=VALUE; fix: e.g. DOCKPLUG_DEBUG=1")


def set_options(name: str, pairs: list[str], client: Any = None) -> None:
    """``docker plugin set NAME KEY=VALUE...`` (the plugin must be disabled)."""
    import docker.errors

    check_pairs(pairs)
    client = client or connect()
    plugin = get_plugin(client, name)
    if plugin.enabled:
        raise EngineError(
            f"{plugin.name} is enabled and dockerd only changes settings of a disabled plugin; "
            f"fix: dockplug disable {plugin.name}, set, then enable"
        )
    try:
        client.api.configure_plugin(plugin.name, list(pairs))
    except docker.errors.APIError as exc:
        text = explain(exc)
        fix = ""
        if "not found" in text or "not settable" in text:
            fix = "; fix: only settable entries of the config can be set (docker plugin inspect)"
        raise EngineError(f"setting {' '.join(pairs)} on {plugin.name}: {text}{fix}") from exc


def registry_of(ref: str) -> str | None:
    """The registry host of a reference, or None when it names no registry (Docker Hub)."""
    first, sep, _rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def check_pushable(name: str) -> None:
    """Refuse a name ``docker plugin push`` cannot send anywhere useful."""
    example = "127.0.0.1:5000/dockplug/local:0.1"
    if "@" in name:
        raise EngineError(
            f"{name!r} is a digest reference and cannot be pushed; fix: use REGISTRY/REPO:TAG, "
            f"e.g. {example}"
        )
    if registry_of(name) is None:
        raise EngineError(
            f"{name!r} is not a pushable reference: it names no registry (host[:port]/...); "
            f"fix: give the plugin a registry name, e.g. dockplug rename {name} {example}"
        )


ProgressFn = Callable[[str], None]


def follow(stream: Any, what: str, progress: ProgressFn | None) -> dict[str, Any]:
    """Read an Engine API JSON progress stream; report each new status once, raise on an error
    item, return the last ``aux`` item (push: Tag, Digest, Size)."""
    seen: dict[str, str] = {}
    aux: dict[str, Any] = {}
    for item in stream:
        if not isinstance(item, dict):
            continue
        if item.get("error") or item.get("errorDetail"):
            detail = item.get("errorDetail") or {}
            raise EngineError(f"{what}: {item.get('error') or detail.get('message')}")
        if isinstance(item.get("aux"), dict):
            aux = item["aux"]
        status = str(item.get("status") or "")
        if not status:
            continue
        key = str(item.get("id") or "")
        if seen.get(key) == status:
            continue  # the same status with a new progress bar: report once
        seen[key] = status
        if progress is not None:
            progress(f"{key}: {status}" if key else status)
    return aux


@dataclass
class PushResult:
    name: str
    digest: str
    seconds: float


def push(name: str, progress: ProgressFn | None = None, client: Any = None) -> PushResult:
    """``docker plugin push NAME`` with the Engine API's progress lines."""
    import docker.errors
    from docker import auth

    check_pushable(name)
    client = client or connect()
    plugin = get_plugin(client, name)
    api = client.api
    headers = {}
    registry, _repo = auth.resolve_repository_name(plugin.name)
    header = auth.get_config_header(api, registry)
    if header:
        headers["X-Registry-Auth"] = header
    t0 = time.monotonic()
    try:
        # not APIClient.push_plugin: docker SDK 7.1 posts it to /plugins/NAME/pull
        res = api._post(api._url("/plugins/{0}/push", plugin.name), headers=headers, stream=True)
        api._raise_for_status(res)
        aux = follow(api._stream_helper(res, decode=True), f"pushing {plugin.name}", progress)
    except docker.errors.APIError as exc:
        raise EngineError(f"pushing {plugin.name}: {explain(exc)}") from exc
    except OSError as exc:
        raise EngineError(
            f"pushing {plugin.name}: {exc}; fix: is the registry {registry} running?"
        ) from exc
    return PushResult(plugin.name, str(aux.get("Digest", "")), time.monotonic() - t0)


def privileges(ref: str, client: Any = None) -> list[dict[str, Any]]:
    """What REF (a remote reference) asks to be granted: [{Name, Description, Value}]."""
    import docker.errors

    client = client or connect()
    try:
        found = client.api.plugin_privileges(ref)
    except docker.errors.APIError as exc:
        text = explain(exc)
        fix = ""
        if "not found" in text or "unknown" in text or "manifest" in text:
            fix = "; fix: check the reference (REGISTRY/REPO/NAME:TAG) and that it was pushed"
        raise EngineError(f"fetching the privileges of {ref}: {text}{fix}") from exc
    except OSError as exc:
        raise EngineError(f"fetching the privileges of {ref}: {exc}") from exc
    return list(found or [])
