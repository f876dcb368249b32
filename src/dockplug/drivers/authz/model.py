"""An AuthZReq as a typed Cedar request: who (principal), which route (action), and the facts of
its body that let a container reach the host (context).

Nothing here comes from a header: the principal is the TLS client certificate dockerd verified
(``--tlsverify``), or the configured local principal when dockerd sent no user (its unix socket).
Every context attribute of an action is always present (with a neutral value when the body does
not set it), so a ``forbid`` can never be skipped for a missing attribute. Values derived for
policies (normalized bind sources and the folders that hold all of them, ``CAP_``-prefixed
capabilities, host namespaces) are computed once here, because Cedar has no prefix test over a
set. Env values, labels and option values never enter the model: the audit log records it.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from dockplug.drivers.authz import body as B
from dockplug.drivers.authz.certs import CertError, der_from_pem, read
from dockplug.drivers.authz.routes import Route, RouteError, resolve
from dockplug.protocol.authz import AuthzRequest

NAMESPACE = "Docker"


class ModelError(ValueError):
    """The request cannot be modelled: it is denied, with this reason."""


# --- context shapes: attribute -> Cedar type ------------------------------------------------
COMMON = {
    "method": "String",
    "path": "String",
    "route": "String",
    "target": "String",
    "api_version": "String",
}
_BINDS = {"binds": "Set<String>", "binds_within": "Set<String>"}
CONTAINER = {
    "image": "String",
    "user": "String",
    "name": "String",
    "privileged": "Bool",
    **_BINDS,
    "volume_drivers": "Set<String>",
    "volume_devices": "Set<String>",
    "devices": "Set<String>",
    "device_requests": "Long",
    "device_cgroup_rules": "Set<String>",
    "cap_add": "Set<String>",
    "security_opt": "Set<String>",
    "seccomp": "String",
    "apparmor": "String",
    "label_disable": "Bool",
    "custom_masked_paths": "Bool",
    "network_mode": "String",
    "pid_mode": "String",
    "ipc_mode": "String",
    "uts_mode": "String",
    "userns_mode": "String",
    "cgroupns_mode": "String",
    "host_namespaces": "Set<String>",
    "cgroup_parent": "String",
    "sysctls": "Set<String>",
    "runtime": "String",
    "volumes_from": "Set<String>",
}
UPDATE = {
    "devices": "Set<String>",
    "device_requests": "Long",
    "device_cgroup_rules": "Set<String>",
    "cgroup_parent": "String",
}
EXEC = {"privileged": "Bool", "user": "String"}
IMAGE = {"image": "String", "registry": "String", "pull": "Bool", "from_src": "String"}
PLUGIN = {
    "plugin": "String",
    "self": "Bool",
    "remote": "String",
    "registry": "String",
    "privileges": "Set<String>",
    "settings": "Set<String>",
}
VOLUME = {"driver": "String", "options": "Set<String>", **_BINDS, "devices": "Set<String>"}
NETWORK = {
    "driver": "String",
    "options": "Set<String>",
    "internal": "Bool",
    "ingress": "Bool",
    "config_only": "Bool",
    "ipam_driver": "String",
}
SERVICE = {
    "image": "String",
    "user": "String",
    **_BINDS,
    "volume_devices": "Set<String>",
    "cap_add": "Set<String>",
    "sysctls": "Set<String>",
    "networks": "Set<String>",
}
BUILD = {"network_mode": "String"}

#: action -> (context type name, extra attributes, needs a JSON body)
SHAPES: dict[str, tuple[str, dict[str, str], bool]] = {
    "container.create": ("ContainerCreate", CONTAINER, True),
    "container.update": ("ContainerUpdate", UPDATE, True),
    "exec.create": ("ExecCreate", EXEC, True),
    "image.create": ("ImageRef", IMAGE, False),
    "image.push": ("ImageRef", IMAGE, False),
    "image.tag": ("ImageRef", IMAGE, False),
    "volume.create": ("VolumeCreate", VOLUME, True),
    "network.create": ("NetworkCreate", NETWORK, True),
    "service.create": ("ServiceSpec", SERVICE, True),
    "service.update": ("ServiceSpec", SERVICE, True),
    "build.run": ("Build", BUILD, False),
    **{
        f"plugin.{a}": ("Plugin", PLUGIN, a in ("set",))
        for a in ("install", "enable", "disable", "set", "upgrade", "delete", "push", "create",
                  "inspect")
    },
}  # fmt: skip
DEFAULTS = {"String": "", "Bool": False, "Long": 0, "Set<String>": []}


@dataclass(frozen=True)
class Principal:
    kind: str  # "User" (TLS certificate) or "Local" (the unix socket)
    id: str
    cn: str = ""
    sans: tuple[str, ...] = ()
    fingerprint: str = ""

    @property
    def uid(self) -> str:
        return f'{NAMESPACE}::{self.kind}::"{self.id}"'


@dataclass
class Modelled:
    principal: Principal
    route: Route
    action: str
    context: dict[str, Any] = field(default_factory=dict)


def principal_of(req: AuthzRequest, local: str | None) -> Principal:
    """The TLS client certificate's identity, or LOCAL when dockerd sent no user. A user without
    certificates, a CN that differs from ``User``, or no local principal configured: denied."""
    certs = req.request_peer_certificates or []
    if not req.user:
        if certs:
            raise ModelError("peer certificates without a User: not what dockerd sends")
        if not local:
            raise ModelError("no TLS user and no local principal is configured")
        return Principal("Local", local)
    if req.user_authn_method != "TLS":
        raise ModelError(f"User {req.user!r} not authenticated by TLS: not trusted")
    if not certs:
        raise ModelError(f"TLS user {req.user!r} without a peer certificate")
    try:
        info = read(der_from_pem(req.peer_certificates[0]))
    except (CertError, ValueError, IndexError) as exc:
        raise ModelError(f"the client certificate cannot be read: {exc}") from exc
    if info.cn != req.user:
        raise ModelError(f"User {req.user!r} is not the certificate's CN {info.cn!r}")
    return Principal("User", info.cn, info.cn, info.sans, info.fingerprint)


# --- normalizers ------------------------------------------------------------------------------
def host_path(path: str) -> list[str]:
    """A bind source as the kernel reads it: cleaned, and resolved through symlinks where this
    process sees the host's files (a symlink under an allowed folder can point anywhere)."""
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    resolved = os.path.realpath(cleaned)
    return [cleaned] if resolved == cleaned else [cleaned, resolved]


def within(paths: list[str]) -> list[str]:
    """The folders that hold every path (each path's ancestors, intersected): a policy asks
    ``context.binds_within.contains("/srv")``. Empty when there are no paths."""
    common: set[str] | None = None
    for p in paths:
        parts = [x for x in p.split("/") if x]
        ancestors = {"/"} | {"/" + "/".join(parts[: i + 1]) for i in range(len(parts))}
        common = ancestors if common is None else common & ancestors
    return sorted(common or ())


def capability(name: str) -> str:
    """dockerd's ``NormalizeLegacyCapabilities``: upper case, ``CAP_`` prefixed, ALL kept."""
    up = name.upper()
    return up if up == "ALL" or up.startswith("CAP_") else "CAP_" + up


def registry_of(ref: str) -> tuple[str, str]:
    """(registry, normalized name) of an image reference, as distribution/reference reads it:
    the first component is a registry when it has a dot or a colon or is localhost; else
    docker.io. Lower-cased: a registry's host name is case-insensitive."""
    name = ref.strip()
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first.lower() == "localhost"):
        registry = first.lower()
        if registry == "index.docker.io":
            registry = "docker.io"
        return registry, f"{registry}/{rest}"
    return "docker.io", f"docker.io/{name if slash else 'library/' + name}"


def _local_volume(driver: str, opts: dict[str, str] | None) -> tuple[list[str], list[str]]:
    """(bind sources, devices) a ``local`` volume's options mount: ``o=bind`` with ``device``
    binds a host folder; any other ``type`` with a ``device`` mounts it (a disk, for one)."""
    if driver not in ("", "local") or not opts:
        return [], []
    device = opts.get("device", "")
    o = [x.strip() for x in opts.get("o", "").split(",")]
    if not device:
        return [], []
    if "bind" in o or "rbind" in o:
        return host_path(device), []
    if opts.get("type", "") in ("", "tmpfs") and not device.startswith("/"):
        return [], []
    return [], [device]


def _bind_source(spec: str) -> list[str]:
    """The host path of one ``Binds`` entry (``src:dst[:mode]``); a named volume has none."""
    parts = spec.split(":")
    if len(parts) > 3:
        raise ModelError(f"HostConfig.Binds entry {spec[:80]!r}: too many ':' (dockerd refuses)")
    if len(parts) == 1 or not parts[0].startswith("/"):
        return []
    return host_path(parts[0])


def _mounts(mounts: list[dict[str, Any]] | None, default_driver: str) -> dict[str, list[str]]:
    binds: list[str] = []
    drivers: list[str] = []
    devices: list[str] = []
    for m in mounts or []:
        kind, source = m.get("Type", ""), m.get("Source", "")
        if kind == "volume":
            config = (m.get("VolumeOptions") or {}).get("DriverConfig") or {}
            driver = config.get("Name", "") or default_driver or "local"
            drivers.append(driver)
            b, d = _local_volume(driver, config.get("Options"))
            binds += b
            devices += d
        elif kind in ("tmpfs", "npipe", "image", "cluster"):
            continue
        elif source.startswith("/") or kind == "bind":
            binds += host_path(source or "/")
    return {"binds": binds, "volume_drivers": drivers, "volume_devices": devices}


def _security(opts: list[str]) -> dict[str, Any]:
    """dockerd's ``parseSecurityOpt``: ``key=value`` or the legacy ``key:value``; a seccomp
    profile (JSON) is shown as ``seccomp=custom``."""
    out: dict[str, Any] = {"seccomp": "default", "apparmor": "default", "label_disable": False}
    normalized = []
    for opt in opts:
        if opt == "no-new-privileges":
            normalized.append("no-new-privileges=true")
            continue
        key, sep, value = opt.partition("=")
        if not sep:
            key, sep, value = opt.partition(":")
        if not sep:
            raise ModelError(f"HostConfig.SecurityOpt {opt[:60]!r}: expected KEY=VALUE")
        if key == "seccomp":
            value = value if value in ("unconfined", "builtin") else "custom"
            out["seccomp"] = value
        elif key == "apparmor":
            out["apparmor"] = value
        elif key == "label" and value == "disable":
            out["label_disable"] = True
        normalized.append(f"{key}={value}")
    out["security_opt"] = normalized
    return out


_NAMESPACES = ("network", "pid", "ipc", "uts", "userns", "cgroupns")


def _devices(res: dict[str, Any]) -> dict[str, Any]:
    return {
        "devices": [d.get("PathOnHost", "") for d in res.get("Devices") or []],
        "device_requests": len(res.get("DeviceRequests") or []),
        "device_cgroup_rules": list(res.get("DeviceCgroupRules") or []),
        "cgroup_parent": res.get("CgroupParent", ""),
    }


def container_create(route: Route, data: dict[str, Any]) -> dict[str, Any]:
    hc: dict[str, Any] = data.get("HostConfig") or {}
    binds = [p for spec in hc.get("Binds") or [] for p in _bind_source(spec)]
    mounts = _mounts(hc.get("Mounts"), hc.get("VolumeDriver", ""))
    binds += mounts["binds"]
    caps = [*(hc.get("CapAdd") or []), *(hc.get("Capabilities") or [])]
    modes = {
        "network_mode": hc.get("NetworkMode", ""),
        "pid_mode": hc.get("PidMode", ""),
        "ipc_mode": hc.get("IpcMode", ""),
        "uts_mode": hc.get("UTSMode", ""),
        "userns_mode": hc.get("UsernsMode", ""),
        "cgroupns_mode": hc.get("CgroupnsMode", ""),
    }
    return {
        "image": data.get("Image", ""),
        "user": data.get("User", ""),
        "name": route.arg("name"),
        "privileged": bool(hc.get("Privileged", False)),
        "binds": binds,
        "binds_within": within(binds),
        "volume_drivers": mounts["volume_drivers"],
        "volume_devices": mounts["volume_devices"],
        **_devices(hc),
        "cap_add": [capability(c) for c in caps],
        **_security(hc.get("SecurityOpt") or []),
        # dockerd masks /proc paths only when these are nil: [] (systempaths=unconfined) or a
        # shorter list unmasks them
        "custom_masked_paths": hc.get("MaskedPaths") is not None
        or hc.get("ReadonlyPaths") is not None,
        **modes,
        "host_namespaces": [
            ns for ns, mode in zip(_NAMESPACES, modes.values(), strict=True) if mode == "host"
        ],
        "sysctls": sorted((hc.get("Sysctls") or {}).keys()),
        "runtime": hc.get("Runtime", ""),
        "volumes_from": list(hc.get("VolumesFrom") or []),
    }


def _image(route: Route) -> dict[str, Any]:
    if route.action == "image.create":
        ref = route.arg("fromImage")
        tag = route.arg("tag")
        if ref and tag and "@" not in ref and ":" not in ref.rpartition("/")[2]:
            ref = f"{ref}:{tag}"
        pull = bool(ref)
        src = "" if pull else route.arg("fromSrc")
    elif route.action == "image.tag":
        ref, pull, src = route.arg("repo"), False, ""
    else:
        ref, pull, src = route.target, False, ""
    registry, name = registry_of(ref) if ref else ("", "")
    return {"image": name, "registry": registry, "pull": pull, "from_src": src}


def _plugin(route: Route, data: Any, self_name: str) -> dict[str, Any]:
    name = route.target or route.arg("name") or route.arg("remote")
    remote = route.arg("remote")
    bare = name.removesuffix(":latest")
    out: dict[str, Any] = {
        "plugin": bare,
        "self": bool(self_name) and bare in (self_name, self_name.removesuffix(":latest")),
        "remote": remote,
        "registry": registry_of(remote)[0] if remote else "",
        "privileges": [],
        "settings": [],
    }
    if route.action == "plugin.set":
        out["settings"] = sorted({s.partition("=")[0] for s in data or []})
    elif route.action in ("plugin.install", "plugin.upgrade") and data:
        out["privileges"] = sorted({p.get("Name", "") for p in data})
    return out


def _volume(data: dict[str, Any]) -> dict[str, Any]:
    driver = data.get("Driver", "") or "local"
    opts = data.get("DriverOpts") or {}
    binds, devices = _local_volume(driver, opts)
    return {
        "driver": driver,
        "options": sorted(opts),
        "binds": binds,
        "binds_within": within(binds),
        "devices": devices,
    }


def _network(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "driver": data.get("Driver", "") or "bridge",
        "options": sorted(data.get("Options") or {}),
        "internal": bool(data.get("Internal", False)),
        "ingress": bool(data.get("Ingress", False)),
        "config_only": bool(data.get("ConfigOnly", False)),
        "ipam_driver": (data.get("IPAM") or {}).get("Driver", "") or "default",
    }


def _service(data: dict[str, Any]) -> dict[str, Any]:
    task = data.get("TaskTemplate") or {}
    spec = task.get("ContainerSpec") or {}
    mounts = _mounts(spec.get("Mounts"), "")
    return {
        "image": spec.get("Image", ""),
        "user": spec.get("User", ""),
        "binds": mounts["binds"],
        "binds_within": within(mounts["binds"]),
        "volume_devices": mounts["volume_devices"],
        "cap_add": [capability(c) for c in spec.get("CapabilityAdd") or []],
        "sysctls": sorted((spec.get("Sysctls") or {}).keys()),
        "networks": [n.get("Target", "") for n in task.get("Networks") or []],
    }


_KINDS: dict[str, B.Kind] = {
    "container.create": B.CONTAINER_CREATE,
    "container.update": B.CONTAINER_UPDATE,
    "exec.create": B.EXEC_CREATE,
    "volume.create": B.VOLUME_CREATE,
    "network.create": B.NETWORK_CREATE,
    "service.create": B.SERVICE_SPEC,
    "service.update": B.SERVICE_SPEC,
    "plugin.set": B.PLUGIN_SET,
    "plugin.install": B.PLUGIN_PRIVILEGES,
    "plugin.upgrade": B.PLUGIN_PRIVILEGES,
}


def _media_type(headers: dict[str, str]) -> str:
    value = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    return value.split(";", 1)[0].strip().lower()


def build(req: AuthzRequest, local: str | None, self_name: str = "") -> Modelled:
    """The Cedar request for one AuthZReq; ModelError (deny) when it cannot be read."""
    if not req.request_method or not req.request_uri:
        raise ModelError("no RequestMethod or RequestUri")
    principal = principal_of(req, local)
    return build_for(principal, req, self_name)


def build_for(principal: Principal, req: AuthzRequest, self_name: str = "") -> Modelled:
    try:
        route = resolve(req.request_method or "", req.request_uri or "")
    except RouteError as exc:
        raise ModelError(str(exc)) from exc
    media = _media_type(req.request_headers or {})
    if media == "application/x-www-form-urlencoded" and route.method in ("POST", "PUT", "PATCH"):
        # Go's ParseForm reads such a body into the same values as the query (body first),
        # and dockerd never forwards it: parameters the policy cannot see
        raise ModelError("a form-encoded body: its parameters are hidden from authorization")
    shape = SHAPES.get(route.action)
    context: dict[str, Any] = {
        "method": route.method,
        "path": route.path,
        "route": route.template,
        "target": route.target,
        "api_version": route.version,
    }
    if shape is not None:
        _, attrs, needs_body = shape
        data: Any = None
        kind = _KINDS.get(route.action)
        if kind is not None:
            raw = _raw_body(req)
            if not raw:
                if needs_body:
                    why = f" (Content-Type {media!r})" if media != "application/json" else ""
                    raise ModelError(f"{route.action}: the request body is missing{why}")
            else:
                try:
                    data = B.decode(kind, raw)
                except B.BodyError as exc:
                    raise ModelError(str(exc)) from exc
        context.update({k: DEFAULTS[t] for k, t in attrs.items()})
        context.update(_extract(route, data or {}, self_name))
    return Modelled(principal, route, route.action, context)


def _raw_body(req: AuthzRequest) -> bytes:
    try:
        return req.body
    except ValueError as exc:
        raise ModelError(f"RequestBody is not base64: {exc}") from exc


def _extract(route: Route, data: Any, self_name: str) -> dict[str, Any]:
    action = route.action
    if action == "container.create":
        return container_create(route, data)
    if action == "container.update":
        return _devices(data)
    if action == "exec.create":
        return {"privileged": bool(data.get("Privileged", False)), "user": data.get("User", "")}
    if action.startswith("image."):
        return _image(route)
    if action.startswith("plugin."):
        return _plugin(route, data, self_name)
    if action == "volume.create":
        return _volume(data)
    if action == "network.create":
        return _network(data)
    if action.startswith("service."):
        return _service(data)
    if action == "build.run":
        return {"network_mode": route.arg("networkmode")}
    return {}
