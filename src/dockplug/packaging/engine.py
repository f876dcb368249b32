"""Managed-plugin verbs over the Engine API (docker SDK, ``DOCKER_HOST`` honoured), with errors
that say what to do, and ``enable`` that waits for the socket and runs the doctor on failure."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockplug.errors import ConfigError
from dockplug.packaging.config import PLUGIN_SOCKET_DIR


class EngineError(ConfigError):
    """An Engine API call failed; the message says why and what to do."""


def connect(timeout: int = 600) -> Any:
    """A docker SDK client from the environment (DOCKER_HOST and friends)."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise EngineError(
            f"Engine API not reachable at {host} ({type(exc).__name__}: {exc}); fix: start "
            "dockerd or set DOCKER_HOST"
        ) from exc
    return client


def is_local(client: Any) -> bool:
    """Whether dockerd runs on this machine (a unix socket), so its files can be looked at."""
    base = str(getattr(client.api, "base_url", ""))
    return base.startswith("http+docker://localhost") or "unix" in base


def data_root(client: Any) -> str:
    return str(client.info().get("DockerRootDir", "/var/lib/docker"))


def _explain(exc: Exception) -> str:
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
        raise EngineError(f"{name}: {_explain(exc)}") from exc


def create(name: str, bundle: Path, client: Any = None) -> Any:
    """Register the bundle folder as plugin NAME (created disabled)."""
    import docker.errors

    from dockplug.packaging.doctor import diagnose_bundle

    errors = [f for f in diagnose_bundle(bundle) if f.level == "error"]
    if errors:
        raise EngineError(
            f"{bundle} is not a usable plugin bundle:\n" + "\n".join(str(f) for f in errors)
        )
    client = client or connect()
    try:
        return client.plugins.create(name, str(bundle))
    except docker.errors.APIError as exc:
        text = _explain(exc)
        fix = ""
        if "already exists" in text:
            fix = f"; fix: dockplug rm {name} first, or choose another name"
        raise EngineError(f"creating {name}: {text}{fix}") from exc


@dataclass
class EnableResult:
    name: str
    id: str
    seconds: float  # from the enable request to the socket answering
    socket: Path | None


def _bind_sources(plugin: Any) -> list[str]:
    mounts = (plugin.attrs.get("Settings") or {}).get("Mounts") or []
    return [
        str(m["Source"])
        for m in mounts
        if m.get("Type") == "bind" and isinstance(m.get("Source"), str)
    ]


def enable(name: str, timeout: int = 30, client: Any = None) -> EnableResult:
    """Enable NAME and wait for its socket; on failure the error carries the doctor's findings."""
    import docker.errors

    from dockplug.packaging.doctor import diagnose_installed

    client = client or connect()
    plugin = get_plugin(client, name)
    if plugin.enabled:
        raise EngineError(f"{plugin.name} is already enabled")
    local = is_local(client)
    if local:
        # runc refuses a bind mount whose host folder is missing; make it, as docker -v does
        for src in _bind_sources(plugin):
            Path(src).mkdir(parents=True, exist_ok=True)
    socket_name = str(((plugin.attrs.get("Config") or {}).get("Interface") or {}).get("Socket"))
    sock = Path(PLUGIN_SOCKET_DIR) / plugin.id / socket_name
    t0 = time.monotonic()
    try:
        plugin.enable(timeout=timeout)
    except (docker.errors.APIError, OSError) as exc:
        try:
            found = diagnose_installed(name, client)
            findings = [str(f) for f in found if f.check != "disabled"]
        except Exception as derr:  # the enable error matters more
            findings = [f"(the doctor failed too: {derr})"]
        extra = "\n".join(findings) or (
            "nothing wrong in the config or rootfs; the plugin process probably exited or did "
            f"not listen on {PLUGIN_SOCKET_DIR}/{socket_name} within ~9.5 s; fix: read dockerd's "
            f"log lines with plugin={plugin.id}"
        )
        raise EngineError(
            f"enabling {plugin.name} failed: {_explain(exc)}\ndoctor:\n{extra}"
        ) from exc
    if local:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    seconds = time.monotonic() - t0
    return EnableResult(plugin.name, plugin.id, seconds, sock if local else None)


def disable(name: str, force: bool = False, client: Any = None) -> None:
    import docker.errors

    client = client or connect()
    plugin = get_plugin(client, name)
    if not plugin.enabled:
        raise EngineError(f"{plugin.name} is already disabled")
    try:
        plugin.disable(force=force)
    except docker.errors.APIError as exc:
        text = _explain(exc)
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
        text = _explain(exc)
        fix = ""
        if "enabled" in text:
            fix = f"; fix: dockplug disable {plugin.name} first, or use --force"
        elif "in use" in text:
            fix = "; fix: remove the volumes made with it first, or use --force"
        raise EngineError(f"removing {plugin.name}: {text}{fix}") from exc


def set_options(name: str, pairs: list[str], client: Any = None) -> None:
    """``docker plugin set NAME KEY=VALUE...`` (the plugin must be disabled)."""
    import docker.errors

    for pair in pairs:
        if "=" not in pair or pair.startswith("="):
            raise EngineError(f"{pair!r} is not KEY=VALUE; fix: e.g. DOCKPLUG_DEBUG=1")
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
        text = _explain(exc)
        fix = ""
        if "not found" in text or "not settable" in text:
            fix = "; fix: only settable entries of the config can be set (docker plugin inspect)"
        raise EngineError(f"setting {' '.join(pairs)} on {plugin.name}: {text}{fix}") from exc
