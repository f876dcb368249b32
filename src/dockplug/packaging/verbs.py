"""The managed-plugin verbs that run the doctor when something fails: ``create`` refuses a bundle
the doctor finds broken before dockerd sees it, ``enable`` (and ``install``, which enables)
carries the doctor's findings in its error. They sit above both the Engine API calls
(:mod:`~dockplug.packaging.engine`) and the doctor, which itself uses the Engine API."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dockplug.packaging import engine
from dockplug.packaging.bases import byte_progress
from dockplug.packaging.config import PLUGIN_SOCKET_DIR
from dockplug.packaging.doctor import diagnose_bundle, diagnose_installed, socket_never_created
from dockplug.packaging.engine import EngineError, ProgressFn


def create(name: str, bundle: Path, client: Any = None, console: Any = None) -> Any:
    """Register the bundle folder as plugin NAME (created disabled); with a rich CONSOLE, the
    upload shows a progress bar."""
    import docker.errors

    errors = [f for f in diagnose_bundle(bundle) if f.level == "error"]
    if errors:
        raise EngineError(
            f"{bundle} is not a usable plugin bundle:\n" + "\n".join(str(f) for f in errors)
        )
    client = client or engine.connect()
    try:
        if console is None:
            return client.plugins.create(name, str(bundle))
        _upload(client, name, bundle, console)
        return client.plugins.get(name)
    except docker.errors.APIError as exc:
        text = engine.explain(exc)
        fix = ""
        if "already exists" in text:
            fix = f"; fix: dockplug rm {name} first, or choose another name"
        raise EngineError(f"creating {name}: {text}{fix}") from exc


def _upload(client: Any, name: str, bundle: Path, console: Any) -> None:
    """``docker plugin create NAME BUNDLE`` with a progress bar: the bundle is streamed as a
    tar (config.json, rootfs/) in a chunked body instead of the SDK's silent temporary copy,
    which for an image's rootfs is hundreds of MB written, then read again."""
    total = sum(
        os.lstat(os.path.join(root, f)).st_size
        for root, _dirs, files in os.walk(bundle)
        for f in files
    )
    proc = subprocess.Popen(
        ["tar", "-C", str(bundle), "--numeric-owner", "-c", "config.json", "rootfs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    api = client.api
    with byte_progress(console) as bar:
        task = bar.add_task(f"sending {bundle} to dockerd", total=total)

        def chunks() -> Any:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 20):
                bar.advance(task, len(chunk))
                yield chunk

        try:
            res = api._post(api._url("/plugins/create"), params={"name": name}, data=chunks())
            api._raise_for_status(res)
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.wait() != 0:
                raise EngineError(f"reading {bundle} with tar failed: {err.strip()}")


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

    client = client or engine.connect()
    plugin = engine.get_plugin(client, name)
    if plugin.enabled:
        raise EngineError(f"{plugin.name} is already enabled")
    local = engine.is_local(client)
    if local:
        # runc refuses a bind mount whose host folder is missing; make it, as docker -v does
        for src in _bind_sources(plugin):
            Path(src).mkdir(parents=True, exist_ok=True)
    sock = engine.plugin_socket(plugin)
    t0 = time.monotonic()
    try:
        plugin.enable(timeout=timeout)
    except (docker.errors.APIError, OSError) as exc:
        never = socket_never_created(plugin, engine.explain(exc))
        findings = [str(never)] if never else []
        try:
            found = diagnose_installed(name, client)
            findings += [str(f) for f in found if f.check != "disabled"]
        except Exception as derr:  # the enable error matters more
            findings.append(f"(the doctor failed too: {derr})")
        extra = "\n".join(findings) or (
            "nothing wrong in the config or rootfs; the plugin process probably exited or did "
            f"not listen on {PLUGIN_SOCKET_DIR}/{sock.name} within ~9.5 s; fix: read dockerd's "
            f"log lines with plugin={plugin.id}"
        )
        raise EngineError(
            f"enabling {plugin.name} failed: {engine.explain(exc)}\ndoctor:\n{extra}"
        ) from exc
    if local:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    seconds = time.monotonic() - t0
    return EnableResult(plugin.name, plugin.id, seconds, sock if local else None)


@dataclass
class InstallResult:
    name: str
    id: str
    pull_seconds: float
    enabled: EnableResult | None


def install(
    ref: str,
    granted: list[dict[str, Any]],
    *,
    alias: str | None = None,
    settings: list[str] | None = None,
    enable_after: bool = True,
    progress: ProgressFn | None = None,
    client: Any = None,
) -> InstallResult:
    """Pull REF granting exactly GRANTED (from :func:`~dockplug.packaging.engine.privileges`),
    apply SETTINGS, enable."""
    import docker.errors

    engine.check_pairs(settings or [])
    client = client or engine.connect()
    t0 = time.monotonic()
    try:
        stream = client.api.pull_plugin(ref, granted, name=alias)
        engine.follow(stream, f"installing {ref}", progress)
    except docker.errors.APIError as exc:
        text = engine.explain(exc)
        fix = ""
        if "already exists" in text:
            fix = f"; fix: dockplug rm {alias or ref} first, or use --alias"
        elif "privileges" in text:
            fix = "; fix: grant exactly the privileges dockplug install lists"
        elif "connection refused" in text or "dial tcp" in text or "no such host" in text:
            where = engine.registry_of(ref) or "docker.io"
            fix = f"; fix: is the registry {where} running and reachable from dockerd?"
        raise EngineError(f"installing {ref}: {text}{fix}") from exc
    pull_seconds = time.monotonic() - t0
    name = alias or ref
    plugin = engine.get_plugin(client, name)
    try:
        if settings:
            engine.set_options(plugin.name, list(settings), client)
        result = enable(plugin.name, client=client) if enable_after else None
    except EngineError as exc:
        raise EngineError(
            f"{exc}\n({plugin.name} is installed, disabled; fix the cause, then dockplug "
            f"enable {plugin.name}, or dockplug rm {plugin.name})"
        ) from exc
    return InstallResult(plugin.name, plugin.id, pull_seconds, result)
