"""IpamDriver: wire models, endpoint table and the driver base class.

Reference: plugin-protocol.md §5. IPAM replies carry application errors in ``Error``, not ``Err``:
on a 200 reply dockerd reads only ``Error`` (``{"Err": "x"}`` would be a success). On a non-200
reply the generic client reads ``Err``, so error replies carry both keys. Request addresses are
plain IPs, reply addresses CIDR strings.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from dockplug.errors import PluginError
from dockplug.protocol.base import (
    Driver,
    Empty,
    Endpoint,
    Lane,
    Protocol,
    WireModel,
    nonblocking,
    pair_reply,
    placeholder,
)

GATEWAY = "com.docker.network.gateway"
"""``Options["RequestAddressType"]`` of the request for a network's gateway address."""
MAC_ADDRESS = "com.docker.network.endpoint.macaddress"
"""``Options`` key of the endpoint's MAC (only sent if capabilities require it)."""


class IpamReply(WireModel):
    """The IPAM reply base: success is ``{}``, an application error carries ``Error``."""

    error: str | None = None


class CapabilitiesReply(IpamReply):
    """``RequiresRequestReplay``: dockerd replays pool and gateway requests after it restarts."""

    requires_mac_address: bool = Field(default=False, alias="RequiresMACAddress")
    requires_request_replay: bool = False


class AddressSpacesReply(IpamReply):
    local_default_address_space: str = "LocalDefault"
    global_default_address_space: str = "GlobalDefault"


class _WithOptions(WireModel):
    options: dict[str, str] | None = None

    def option(self, key: str, default: str | None = None) -> str | None:
        """One ``Options`` entry; a ``null`` map reads as empty."""
        return (self.options or {}).get(key, default)


class RequestPoolRequest(_WithOptions):
    """``Pool``/``SubPool`` are CIDR strings, ``""`` when the driver may choose."""

    address_space: str = ""
    pool: str = ""
    sub_pool: str = ""
    v6: bool = False


class RequestPoolReply(IpamReply):
    """``Pool`` must parse as a CIDR prefix; identical requests should get the same ``PoolID``."""

    pool_id: str
    pool: str
    data: dict[str, str] | None = None


class PoolRequest(WireModel):
    pool_id: str


class RequestAddressRequest(_WithOptions):
    """``Address`` is a plain IP, or ``""`` for any free address."""

    pool_id: str
    address: str = ""

    @property
    def is_gateway(self) -> bool:
        """True for the request of the network's gateway address."""
        return self.option("RequestAddressType") == GATEWAY

    @property
    def mac_address(self) -> str | None:
        return self.option(MAC_ADDRESS)


class RequestAddressReply(IpamReply):
    """``Address`` is CIDR (``A.B.C.D/len``); an empty one fails in dockerd."""

    address: str
    data: dict[str, str] | None = None


class ReleaseAddressRequest(WireModel):
    pool_id: str
    address: str


_capabilities_reply = pair_reply(
    CapabilitiesReply, "requires_mac_address", "requires_request_replay"
)
_spaces_reply = pair_reply(
    AddressSpacesReply, "local_default_address_space", "global_default_address_space"
)


def _pool_reply(
    result: RequestPoolReply | tuple[str, str] | tuple[str, str, dict[str, str]], _: Any
) -> RequestPoolReply:
    if isinstance(result, RequestPoolReply):
        return result
    pool_id, pool, *rest = result
    return RequestPoolReply(pool_id=pool_id, pool=pool, data=rest[0] if rest else None)


def _address_reply(
    result: RequestAddressReply | str | None, req: RequestAddressRequest
) -> RequestAddressReply:
    if isinstance(result, RequestAddressReply):
        return result
    if not result:
        raise PluginError(f"no address available in pool {req.pool_id}")
    return RequestAddressReply(address=result)


def _ok(_: Any, __: Any) -> IpamReply:
    return IpamReply()


def _pool(req: RequestPoolRequest) -> str:
    return f"pool={req.pool or '*'}" + (" v6" if req.v6 else "")


def _pool_id(req: PoolRequest) -> str:
    return f"pool={req.pool_id[:40]}"


def _address(req: RequestAddressRequest | ReleaseAddressRequest) -> str:
    return f"pool={req.pool_id[:40]} addr={req.address or '*'}"


_P = "/IpamDriver."

IPAM = Protocol(
    implements="IpamDriver",
    managed_type="docker.ipamdriver/1.0",
    endpoints=(
        Endpoint(
            _P + "GetCapabilities",
            "ipam_capabilities",
            Empty,
            _capabilities_reply,
            required=False,
        ),
        Endpoint(
            _P + "GetDefaultAddressSpaces", "get_default_address_spaces", Empty, _spaces_reply
        ),
        Endpoint(
            _P + "RequestPool",
            "request_pool",
            RequestPoolRequest,
            _pool_reply,
            lane=Lane.SLOW,
            subject=_pool,
        ),
        Endpoint(
            _P + "ReleasePool", "release_pool", PoolRequest, _ok, lane=Lane.SLOW, subject=_pool_id
        ),
        Endpoint(
            _P + "RequestAddress",
            "request_address",
            RequestAddressRequest,
            _address_reply,
            lane=Lane.SLOW,
            subject=_address,
        ),
        Endpoint(
            _P + "ReleaseAddress",
            "release_address",
            ReleaseAddressRequest,
            _ok,
            lane=Lane.SLOW,
            subject=_address,
        ),
    ),
    error_key="Error",
    extra_error_keys=("Err",),
)


class IpamDriver(Driver):
    """Base class of an IPAM plugin. Methods may be ``def`` (worker thread) or ``async def``;
    raise a :class:`dockplug.PluginError` to fail a call (dockerd shows ``remote: <message>``).

    ``request_pool`` returns ``(pool_id, cidr)`` (optionally plus a data map) or a reply model,
    ``request_address`` the CIDR address or a reply model. Hand out distinct pools: dockerd
    re-requests when a pool overlaps one in use and loops on a driver that repeats itself.
    """

    metrics_family: ClassVar[str] = "ipam"

    protocols: ClassVar[tuple[Protocol, ...]] = (IPAM,)

    @nonblocking
    def ipam_capabilities(self, req: Empty) -> Any:
        """No MAC, no replay unless overridden: return ``(requires_mac, requires_replay)``."""
        return None

    @nonblocking
    def get_default_address_spaces(self, req: Empty) -> Any:
        """``LocalDefault``/``GlobalDefault`` unless overridden; called before every RequestPool."""
        return None

    @placeholder
    def request_pool(self, req: RequestPoolRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def release_pool(self, req: PoolRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def request_address(self, req: RequestAddressRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def release_address(self, req: ReleaseAddressRequest) -> Any:
        raise NotImplementedError
