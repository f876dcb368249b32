"""The doctor's device and capability checks: what a plugin's driver or programs need
(FUSE, loop devices made after enable, mount capabilities) against what its config gives."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dockplug.packaging.findings import Finding, _get

#: devices used only to mount (so the plugin needs CAP_SYS_ADMIN) and how a host gets them
MOUNT_DEVICES = {"/dev/fuse": "modprobe fuse", "/dev/loop-control": "modprobe loop"}
#: programs a plugin may run that need a device and capability: (capabilities, devices, why)
PROGRAM_NEEDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "sshfs": (("CAP_SYS_ADMIN",), ("/dev/fuse",), "a FUSE mount"),
    "rclone": (("CAP_SYS_ADMIN",), ("/dev/fuse",), "FUSE mounts of its volumes"),
    "fusermount": (("CAP_SYS_ADMIN",), ("/dev/fuse",), "a FUSE mount"),
    "mount.fuse": (("CAP_SYS_ADMIN",), ("/dev/fuse",), "a FUSE mount"),
    "s3fs": (("CAP_SYS_ADMIN",), ("/dev/fuse",), "a FUSE mount"),
    "gcsfuse": (("CAP_SYS_ADMIN",), ("/dev/fuse",), "a FUSE mount"),
    "goofys": (("CAP_SYS_ADMIN",), ("/dev/fuse",), "a FUSE mount"),
    "losetup": (("CAP_SYS_ADMIN",), ("/dev/loop-control",), "loop devices"),
    "iptables": (("CAP_NET_ADMIN", "CAP_NET_RAW"), (), "netfilter rules over netlink"),
}


def _needs(config: Any, argv: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(capability -> why, device path -> why) the plugin needs, from what it runs: a
    built-in dockplug driver (its registry entry), a program known to need devices, or a
    declared mount device."""
    from dockplug.drivers.registry import BUILTINS

    caps: dict[str, str] = {}
    devices: dict[str, str] = {}
    words = [str(w) for w in [*(_get(config, "entrypoint") or []), *argv]]
    if len(argv) >= 2 and argv[0] == "serve" and argv[1] in BUILTINS:
        managed = BUILTINS[argv[1]].managed
        why = f"the dockplug {argv[1]} driver"
        for cap in managed.capabilities:
            caps.setdefault(cap, why)
        for dev in managed.devices:
            devices.setdefault(dev, why)
    for program, (need_caps, need_devices, what) in PROGRAM_NEEDS.items():
        if any(program in Path(w).name for w in words):
            for dev in need_devices:
                devices.setdefault(dev, f"{program} ({what})")
            for cap in need_caps:
                caps.setdefault(cap, f"{program} ({what})")
    for d in _get(config, "linux", "devices") or []:
        path = _get(d, "path")
        if path in MOUNT_DEVICES:
            caps.setdefault("CAP_SYS_ADMIN", f"mounting with {path}")
    return caps, devices


def check_devices(
    config: Any,
    args: Any = None,
    settings_devices: Any = None,
    host_level: str | None = "warning",
) -> list[Finding]:
    """Devices and capabilities: what the plugin needs against linux.devices and
    linux.capabilities, and each device present on this host (HOST_LEVEL: how bad its absence
    is; an error for a plugin installed here, a warning for a bundle that may go elsewhere,
    None for a plugin on another host)."""
    linux = _get(config, "linux") or {}
    declared = [_get(d, "path") for d in (_get(linux, "devices") or [])]
    argv = args if args is not None else _get(config, "args", "value")
    need_caps, need_devs = _needs(config, [str(a) for a in argv or []])
    findings: list[Finding] = []
    for dev, why in need_devs.items():
        if dev in declared or _gives_host_dev(config):
            continue
        name = Path(dev).name
        findings.append(
            Finding(
                "fuse-device" if dev == "/dev/fuse" else "device-missing",
                "error",
                f"{why} needs the device {dev}, which linux.devices does not declare",
                f'add {{"name": "{name}", "path": "{dev}"}} to linux.devices'
                + (" and CAP_SYS_ADMIN to linux.capabilities" if dev == "/dev/fuse" else ""),
            )
        )
    have_caps = {str(c).upper() for c in _get(linux, "capabilities") or []}
    for cap, why in need_caps.items():
        if cap not in have_caps:
            findings.append(
                Finding(
                    "capability-missing",
                    "error",
                    f"{why} needs {cap}, which linux.capabilities lacks (the mount fails with "
                    "'operation not permitted')",
                    f'add "{cap}" to linux.capabilities',
                )
            )
    paths = [_get(d, "path") for d in settings_devices] if settings_devices else declared
    for path in paths:
        if host_level and isinstance(path, str) and path and not os.path.exists(path):
            load = MOUNT_DEVICES.get(path)
            findings.append(
                Finding(
                    "host-device-missing",
                    host_level,
                    f"this host has no {path}, which the plugin's linux.devices asks for "
                    "(enable fails with 'no such file or directory')",
                    (f"{load} on the host, or " if load else "")
                    + "enable it on a host that has the device",
                )
            )
    return findings + check_runtime_devices(config, [str(a) for a in argv or []])


def _gives_host_dev(config: Any) -> bool:
    """Whether every host device node, made before or after enable, reaches the plugin: the
    host's /dev bind-mounted on /dev (runc then makes no /dev of its own) and allowAllDevices
    (the device cgroup lets any node through). allowAllDevices alone makes no node."""
    binds_dev = any(
        _get(m, "destination") == "/dev" and _get(m, "source") == "/dev"
        for m in _get(config, "mounts") or []
    )
    return binds_dev and bool(_get(config, "linux", "allowAllDevices"))


def check_runtime_devices(config: Any, argv: list[str]) -> list[Finding]:
    """Device nodes a built-in driver opens that the kernel makes while it runs (a /dev/loopN
    per size-limited volume): dockerd copies linux.devices into the plugin once, at enable, so
    only the host's /dev and allowAllDevices give them (-o size= failed with 'failed to setup
    loop device' on a bundle with /dev/loop-control alone)."""
    from dockplug.drivers.registry import BUILTINS

    if not (len(argv) >= 2 and argv[0] == "serve" and argv[1] in BUILTINS):
        return []
    nodes = BUILTINS[argv[1]].managed.runtime_devices
    if not nodes or _gives_host_dev(config):
        return []
    return [
        Finding(
            "runtime-devices",
            "error",
            f"the dockplug {argv[1]} driver opens {', '.join(nodes)}, device nodes the kernel "
            "makes after enable, but the plugin gets only the devices linux.devices lists at "
            "enable (losetup fails with 'failed to setup loop device')",
            'set linux.allowAllDevices to true and add {"source": "/dev", "destination": '
            '"/dev", "type": "bind", "options": ["rbind", "rslave"]} to mounts (dockplug build '
            "does both)",
        )
    ]
