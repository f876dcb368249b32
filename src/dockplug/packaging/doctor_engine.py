"""The doctor's engine-mount check: a managed plugin that reads the Engine API through a host
folder bind-mounted into it (dockplug-net's leak reclaimer: the host's /run, read-only, on
/mnt/engine, with ``--docker-host unix:///mnt/engine/docker.sock``) must find there the API
socket of the dockerd it is installed in. dockerd mounts whatever source the setting names
without looking: a dockerd whose socket lives elsewhere, or a folder holding another dockerd's
socket, leaves the plugin reading nothing, or the wrong host's containers."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from dockplug.packaging.doctor_etcd import _effective
from dockplug.packaging.findings import Finding, _get

ENGINE_PROBE_TIMEOUT = 5.0  # seconds the socket found in the mount gets to answer /info


def engine_socket_in_plugin(config: Any, settings: Any) -> str | None:
    """The unix socket path (inside the plugin) its ``--docker-host`` or ``DOCKER_HOST`` names,
    as set in SETTINGS; None when it names none, or a TCP address."""
    args = [str(a) for a in (settings.get("Args") or _get(config, "args", "value") or [])]
    env = settings.get("Env") or [
        f"{_get(e, 'name')}={_get(e, 'value') or ''}" for e in _get(config, "env") or []
    ]
    url = _effective(env, args, "DOCKER_HOST", "--docker-host")
    if not url.startswith("unix://"):
        return None
    return url.removeprefix("unix://") or None


def _mount_holding(path: str, mounts: Any) -> Any:
    """The mount (as dockerd reports it) whose destination holds PATH: the deepest one."""
    pure = PurePosixPath(path)
    best: tuple[int, Any] | None = None
    for m in mounts or []:
        dest = _get(m, "destination")
        if not isinstance(dest, str):
            continue
        d = PurePosixPath(dest)
        if (pure == d or d in pure.parents) and (best is None or len(d.parts) > best[0]):
            best = (len(d.parts), m)
    return best[1] if best else None


def mount_point(path: Path, mountinfo: str | None = None) -> str:
    """The mount point (in this process's mount namespace) of the filesystem holding PATH."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    real = PurePosixPath(os.path.realpath(path))
    points = [line.split()[4] for line in mountinfo.splitlines() if len(line.split()) > 4]
    holding = [p for p in points if real == PurePosixPath(p) or PurePosixPath(p) in real.parents]
    return max(holding, key=lambda p: len(PurePosixPath(p).parts), default="/")


def dockerd_identity(socket: Path, timeout: float = ENGINE_PROBE_TIMEOUT) -> dict[str, str]:
    """``ID`` and ``DockerRootDir`` of the dockerd answering on SOCKET (EngineError if none)."""
    from dockplug.engine_api import docker_client

    client = docker_client(f"unix://{socket}", timeout=timeout)
    try:
        info = client.info()
    finally:
        client.close()
    return {"ID": str(info.get("ID", "")), "DockerRootDir": str(info.get("DockerRootDir", ""))}


def check_engine_mount(
    name: str,
    config: Any,
    settings: Any,
    own: dict[str, str] | None,
    own_socket: str | None,
    timeout: float = ENGINE_PROBE_TIMEOUT,
) -> list[Finding]:
    """The socket NAME reads the Engine API on, through the bind mount holding it (its source
    as set with ``docker plugin set NAME MOUNT.source=DIR``), is there on this host, on the
    mount the bind carries, and answers as the dockerd OWN describes (``ID`` and
    ``DockerRootDir`` of the one the doctor asks, listening on OWN_SOCKET). Both are compared:
    20.10's ID is the machine's /etc/docker/key.json, the same for every dockerd on it, while
    no two dockerds share a data root. No finding when the plugin reads no unix socket through
    a mount."""
    from dockplug.engine_api import EngineError

    inside = engine_socket_in_plugin(config, settings)
    if inside is None:
        return []
    mount = _mount_holding(inside, settings.get("Mounts") or _get(config, "mounts"))
    if mount is None:
        return []
    label, dest = _get(mount, "name") or "engine", str(_get(mount, "destination"))
    source = _get(mount, "source") or ""
    options = [str(o) for o in _get(mount, "options") or []]
    rel = PurePosixPath(inside).relative_to(dest)
    sock = PurePosixPath(own_socket) if own_socket else None
    folder = str(sock.parent) if sock else "DIR (the folder holding this dockerd's API socket)"
    renamed = sock is not None and sock.name != rel.name and len(rel.parts) == 1
    fix = (
        f"docker plugin disable {name}; docker plugin set {name} {label}.source={folder}"
        + (f' args="... --docker-host unix://{dest}/{sock.name}"' if renamed and sock else "")
        + f"; docker plugin enable {name}"
    )
    reads = f"{name} reads the Engine API at unix://{inside} through its {label} mount"
    if not source:
        return [Finding("engine-mount-unset", "warning", f"{reads}, which has no source", fix)]
    host = Path(source) / rel
    try:
        mode = os.lstat(host).st_mode
    except OSError:
        mode = None
    if mode is None or not stat.S_ISSOCK(mode):
        what = "does not exist" if mode is None else "is not a socket"
        return [
            Finding(
                "engine-mount-no-socket",
                "warning",
                f"{reads} (host {source}), but {host} {what}: the plugin cannot read the "
                "Engine API (dockplug-net's leak reclaimer then frees nothing)",
                fix,
            )
        ]
    if "rbind" not in options:
        point, top = mount_point(host.parent), mount_point(Path(source))
        if point != top:
            return [
                Finding(
                    "engine-mount-submount",
                    "warning",
                    f"{reads} (host {source}), but {host} is on the mount {point}: a plain bind "
                    f"of {source} leaves its submounts out, so the plugin finds no socket there",
                    fix.replace(f"source={folder}", f"source={host.parent}"),
                )
            ]
    try:
        found = dockerd_identity(host, timeout)
    except EngineError as exc:
        return [
            Finding(
                "engine-mount-not-dockerd",
                "warning",
                f"{reads} (host {source}), but nothing answers as dockerd on {host}: {exc}",
                fix,
            )
        ]
    if own and any(own.get(k) and found[k] != own[k] for k in ("ID", "DockerRootDir")):
        return [
            Finding(
                "engine-mount-other-dockerd",
                "warning",
                f"{reads} (host {source}), but {host} is the API socket of another dockerd "
                f"(data root {found['DockerRootDir']}, ID {found['ID']}), not of the one "
                f"{name} is installed in (data root {own.get('DockerRootDir')}"
                + (f", on {own_socket})" if own_socket else ")")
                + ": the plugin would read that dockerd's containers",
                fix,
            )
        ]
    return [
        Finding(
            "engine-mount",
            "info",
            f"{reads}: {host} on this host, where this dockerd (data root "
            f"{found['DockerRootDir']}) answers",
            "nothing to do",
        )
    ]
