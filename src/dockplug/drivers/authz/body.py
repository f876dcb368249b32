"""JSON request bodies read the way dockerd's Go decoder reads them.

``encoding/json`` matches object keys to struct fields exactly, else case-insensitively (with
Unicode folding: the long s U+017F is ``s``, the Kelvin sign is ``k``), lets the last one win,
merges a repeated object into the struct already decoded (golang/go#11673), leaves a bool,
string or struct alone on ``null``, and accepts a string for ``strslice.StrSlice`` fields such as
``CapAdd``. A reader that does any of this differently can be shown one request while dockerd
runs another. Where Go versions fold a key differently (``İ`` matches ``I`` from Go 1.21 on),
the body is refused: which engine build reads it is not knowable here.

Only the fields a policy looks at are described; unknown keys are skipped as Go skips them.
A value of the wrong type is an error, as it is for dockerd (which then fails the call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class BodyError(ValueError):
    """The body cannot be read as dockerd reads it: the request is denied."""


class _Obj(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs in order, duplicates kept."""


class Kind:
    def decode(self, value: Any, old: Any, where: str) -> Any:
        raise NotImplementedError


def _type_error(where: str, want: str, value: Any) -> BodyError:
    got = "object" if isinstance(value, _Obj) else type(value).__name__
    return BodyError(f"{where}: expected {want}, got {got} (dockerd refuses it too)")


@dataclass(frozen=True)
class Scalar(Kind):
    name: str  # bool | string | int | number

    def decode(self, value: Any, old: Any, where: str) -> Any:
        if value is None:
            return old  # Go: null leaves a non-pointer value unchanged
        ok = {
            "bool": isinstance(value, bool),
            "string": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool),
        }[self.name]
        if not ok:
            raise _type_error(where, self.name, value)
        return value


@dataclass(frozen=True)
class Ptr(Kind):
    """A pointer, slice, map or interface field: ``null`` sets it to nil."""

    of: Kind

    def decode(self, value: Any, old: Any, where: str) -> Any:
        return None if value is None else self.of.decode(value, old, where)


@dataclass(frozen=True)
class ListOf(Kind):
    of: Kind

    def decode(self, value: Any, old: Any, where: str) -> Any:
        if value is None:
            return None
        if not isinstance(value, list) or isinstance(value, _Obj):
            raise _type_error(where, "array", value)
        # Go decodes element i into the slice's existing element i (fields of a repeated
        # key's earlier value survive): merging is the reading that shows a policy the most
        prev = old if isinstance(old, list) else []
        return [
            self.of.decode(v, prev[i] if i < len(prev) else None, f"{where}[{i}]")
            for i, v in enumerate(value)
        ]


@dataclass(frozen=True)
class MapOf(Kind):
    of: Kind

    def decode(self, value: Any, old: Any, where: str) -> Any:
        if value is None:
            return None
        if not isinstance(value, _Obj):
            raise _type_error(where, "object", value)
        out: dict[str, Any] = dict(old) if isinstance(old, dict) else {}
        for key, v in value:  # map keys are exact; each element decodes fresh
            out[key] = self.of.decode(v, None, f"{where}[{key!r}]")
        return out


@dataclass(frozen=True)
class StrSlice(Kind):
    """``strslice.StrSlice``: an array of strings or one string."""

    def decode(self, value: Any, old: Any, where: str) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        return ListOf(Scalar("string")).decode(value, None, where)


@dataclass(frozen=True)
class Raw(Kind):
    """``interface{}`` / ``json.RawMessage``: plain JSON, last duplicate winning."""

    def decode(self, value: Any, old: Any, where: str) -> Any:
        return plain(value)


def plain(value: Any) -> Any:
    if isinstance(value, _Obj):
        return {k: plain(v) for k, v in value}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _fold_new(key: str) -> str:
    """Go >= 1.21 ``foldName``: ASCII upper-cased, other runes ToUpper(ToLower(r))."""
    out = []
    for c in key:
        if c.isascii():
            out.append(c.upper())
            continue
        low = "i" if c == "\u0130" else c.lower()  # İ: Go's simple mapping; Python's is "i̇"
        low = low if len(low) == 1 else c
        up = low.upper()
        out.append(up if len(up) == 1 else low)
    return "".join(out)


_OLD_EXTRA = {"\u212a": "k", "\u017f": "s"}  # Kelvin sign, long s: EqualFold's non-ASCII folds


def _fold_old_match(key: str, name: str) -> bool:
    """Go < 1.21 (``bytes.EqualFold``-like ``foldFunc``) against an ASCII field name."""
    if len(key) != len(name):
        return False
    for k, n in zip(key, name, strict=True):
        if k == n or (k.isascii() and k.lower() == n.lower()):
            continue
        if _OLD_EXTRA.get(k) == n.lower():
            continue
        return False
    return True


@dataclass(frozen=True)
class Struct(Kind):
    name: str
    fields: dict[str, Kind]
    _folded: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_folded", {f.upper(): f for f in self.fields})

    def field_for(self, key: str, where: str) -> str | None:
        if key in self.fields:
            return key
        new = self._folded.get(_fold_new(key))
        old = next((f for f in self.fields if _fold_old_match(key, f)), None)
        if new != old:
            raise BodyError(
                f"{where}: key {key!r} matches {new or old!r} in some Go versions only; "
                "spell it as the API does"
            )
        return new

    def decode(self, value: Any, old: Any, where: str) -> Any:
        if value is None:
            return old
        if not isinstance(value, _Obj):
            raise _type_error(where, f"object ({self.name})", value)
        out: dict[str, Any] = dict(old) if isinstance(old, dict) else {}
        for key, v in value:
            name = self.field_for(key, where)
            if name is not None:
                out[name] = self.fields[name].decode(v, out.get(name), f"{where}.{name}")
        return out


def _no_constant(name: str) -> Any:
    raise BodyError(f"{name} is not JSON (Go refuses it)")


def parse(raw: bytes) -> Any:
    """The body as pairs-preserving JSON, refusing what Go's decoder refuses (NaN, a BOM,
    trailing content). Invalid UTF-8 inside strings becomes U+FFFD, as in Go."""
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text, object_pairs_hook=_Obj, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BodyError(f"the request body is not valid JSON: {exc}") from exc


def decode(kind: Kind, raw: bytes, where: str = "body") -> Any:
    return kind.decode(parse(raw), None, where)


# --- the Engine API types a policy looks at (moby api/types) --------------------------------

S, B, INT = Scalar("string"), Scalar("bool"), Scalar("int")
STRINGS = Ptr(ListOf(S))
STRMAP = Ptr(MapOf(S))

DRIVER_CONFIG = Struct("Driver", {"Name": S, "Options": STRMAP})
MOUNT = Struct(
    "Mount",
    {
        "Type": S,
        "Source": S,
        "Target": S,
        "ReadOnly": B,
        "BindOptions": Ptr(
            Struct(
                "BindOptions",
                {"Propagation": S, "NonRecursive": B, "CreateMountpoint": B},
            )
        ),
        "VolumeOptions": Ptr(
            Struct(
                "VolumeOptions",
                {"NoCopy": B, "Subpath": S, "DriverConfig": Ptr(DRIVER_CONFIG)},
            )
        ),
    },
)
DEVICE = Struct("DeviceMapping", {"PathOnHost": S, "PathInContainer": S, "CgroupPermissions": S})
DEVICE_REQUEST = Struct(
    "DeviceRequest",
    {"Driver": S, "Count": INT, "DeviceIDs": STRINGS, "Capabilities": Ptr(ListOf(STRINGS))},
)
RESOURCES: dict[str, Kind] = {
    "CgroupParent": S,
    "Devices": Ptr(ListOf(DEVICE)),
    "DeviceCgroupRules": STRINGS,
    "DeviceRequests": Ptr(ListOf(DEVICE_REQUEST)),
}
HOST_CONFIG = Struct(
    "HostConfig",
    {
        "Binds": STRINGS,
        "Mounts": Ptr(ListOf(MOUNT)),
        "Privileged": B,
        "CapAdd": StrSlice(),
        "Capabilities": STRINGS,
        "SecurityOpt": STRINGS,
        "MaskedPaths": STRINGS,
        "ReadonlyPaths": STRINGS,
        "NetworkMode": S,
        "PidMode": S,
        "IpcMode": S,
        "UTSMode": S,
        "UsernsMode": S,
        "CgroupnsMode": S,
        "Cgroup": S,
        "Sysctls": STRMAP,
        "Runtime": S,
        "VolumesFrom": STRINGS,
        "VolumeDriver": S,
        **RESOURCES,
    },
)
CONTAINER_CREATE = Struct(
    "CreateRequest",
    {
        "Image": S,
        "User": S,
        "Volumes": Ptr(MapOf(Raw())),
        "HostConfig": Ptr(HOST_CONFIG),
        "NetworkingConfig": Ptr(Struct("NetworkingConfig", {"EndpointsConfig": Raw()})),
    },
)
CONTAINER_UPDATE = Struct("UpdateConfig", dict(RESOURCES))
EXEC_CREATE = Struct("ExecConfig", {"User": S, "Privileged": B})
VOLUME_CREATE = Struct(
    "VolumeCreateRequest", {"Name": S, "Driver": S, "DriverOpts": STRMAP, "Labels": STRMAP}
)
NETWORK_CREATE = Struct(
    "NetworkCreateRequest",
    {
        "Name": S,
        "Driver": S,
        "Options": STRMAP,
        "Internal": B,
        "Attachable": B,
        "Ingress": B,
        "ConfigOnly": B,
        "IPAM": Ptr(Struct("IPAM", {"Driver": S, "Options": STRMAP})),
    },
)
PLUGIN_SET = Ptr(ListOf(S))
PLUGIN_PRIVILEGES = Ptr(
    ListOf(Struct("PluginPrivilege", {"Name": S, "Description": S, "Value": STRINGS}))
)
SERVICE_SPEC = Struct(
    "ServiceSpec",
    {
        "Name": S,
        "TaskTemplate": Struct(
            "TaskSpec",
            {
                "ContainerSpec": Ptr(
                    Struct(
                        "ContainerSpec",
                        {
                            "Image": S,
                            "User": S,
                            "Mounts": Ptr(ListOf(MOUNT)),
                            "CapabilityAdd": STRINGS,
                            "Sysctls": STRMAP,
                        },
                    )
                ),
                "Networks": Ptr(ListOf(Struct("NetworkAttachmentConfig", {"Target": S}))),
            },
        ),
    },
)
