"""NetworkDriver (libnetwork "remote" driver): wire models, endpoint table and driver base class.

Reference: plugin-protocol.md §4. dockerd sends ``GetCapabilities`` with an empty body, ``Options``
maps whose values may be strings, JSON booleans or nested maps, ``IPv6Data: []`` for IPv4-only
networks (20.10 and 28 alike; §4.2 says null, so both read as empty), and expects plain IPs (not
CIDR) for the Join gateways. 28 adds ``com.docker.network.enable_ipv4`` to CreateNetwork's
Options and ``com.docker.network.driver.private.no_proxy_6to4`` to ProgramExternalConnectivity's.
It never resends a network's configuration later, so a driver must persist what it needs from
CreateNetwork.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from dockplug.protocol.base import (
    Driver,
    Empty,
    Endpoint,
    ErrReply,
    Lane,
    Protocol,
    WireModel,
    nonblocking,
    pair_reply,
    placeholder,
)

GENERIC_OPTIONS = "com.docker.network.generic"
"""The ``Options`` key holding the user's ``-o/--opt`` driver options (a string map)."""


class _WithOptions(WireModel):
    """A request carrying libnetwork's free-form ``Options`` map (``null`` when empty)."""

    options: dict[str, Any] | None = None

    def option(self, key: str, default: Any = None) -> Any:
        """One ``Options`` entry; a ``null`` map reads as empty."""
        return (self.options or {}).get(key, default)

    @property
    def driver_options(self) -> dict[str, str]:
        """The user's ``-o/--opt`` values (``com.docker.network.generic``), never ``None``."""
        generic = self.option(GENERIC_OPTIONS)
        if not isinstance(generic, dict):
            return {}
        return {str(key): str(value) for key, value in generic.items()}


class IPAMData(WireModel):
    """One pool of a network, as IPAM allocated it. Gateway and aux addresses are CIDR strings."""

    address_space: str = ""
    pool: str | None = None
    gateway: str | None = None
    aux_addresses: dict[str, str] | None = None


class EndpointInterface(WireModel):
    """The container interface's addresses: CIDR strings and a colon-hex MAC, ``""`` when unset.

    In a CreateEndpoint reply a driver may fill only the fields the request left empty; empty
    fields are left out of the reply (dockerd reads ``""`` as "not supplied" anyway).
    """

    address: str = ""
    address_ipv6: str = ""
    mac_address: str = ""

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value != ""}


class InterfaceName(WireModel):
    """The host-side interface (already created by the driver) dockerd moves into the sandbox.

    dockerd names it ``dst_prefix`` plus an index (``eth0``); Go's ``DstName`` is ignored.
    """

    src_name: str
    dst_prefix: str = "eth"


class RouteType(IntEnum):
    """``StaticRoute.RouteType``: a route via ``NextHop``, or a directly connected one."""

    NEXT_HOP = 0
    CONNECTED = 1


class StaticRoute(WireModel):
    destination: str
    route_type: RouteType = RouteType.NEXT_HOP
    next_hop: str | None = None


class CapabilitiesReply(WireModel):
    """``Scope`` must be exactly ``local`` or ``global``; ``ConnectivityScope`` ``""`` means Scope.

    ``GwAllocChecker`` (dockerd 28+) asks dockerd to call GwAllocCheck before each CreateNetwork.
    A plain scope string from ``network_capabilities`` leaves it false.
    """

    scope: Literal["local", "global"] = "local"
    connectivity_scope: Literal["local", "global", ""] = ""
    gw_alloc_checker: bool = False


class GwAllocCheckRequest(_WithOptions):
    pass


class GwAllocCheckReply(WireModel):
    """``Skip*`` true: dockerd reserves no gateway address for that family (unless user-given)."""

    skip_ipv4: bool = False
    skip_ipv6: bool = False


class NetworkRequest(WireModel):
    network_id: str


class CreateNetworkRequest(_WithOptions):
    network_id: str
    ipv4_data: list[IPAMData] | None = None
    ipv6_data: list[IPAMData] | None = None


class AllocateNetworkRequest(CreateNetworkRequest):
    """Sent by the swarm manager to global-scope drivers; Options here is a string map."""


class AllocateNetworkReply(WireModel):
    """Options passed on to the per-node CreateNetwork."""

    options: dict[str, str] | None = None


class EndpointRequest(WireModel):
    network_id: str
    endpoint_id: str


class CreateEndpointRequest(_WithOptions):
    network_id: str
    endpoint_id: str
    interface: EndpointInterface | None = None


class CreateEndpointReply(WireModel):
    """``Interface`` absent: dockerd's addresses stand as they are."""

    interface: EndpointInterface | None = None


class EndpointOperInfoReply(WireModel):
    value: dict[str, Any] = Field(default_factory=dict)


class JoinRequest(_WithOptions):
    network_id: str
    endpoint_id: str
    sandbox_key: str = ""


class JoinReply(WireModel):
    """Gateways are plain IPs (not CIDR). With neither gateway nor default route, dockerd adds a
    ``docker_gwbridge`` interface unless ``disable_gateway_service`` is set."""

    interface_name: InterfaceName | None = None
    gateway: str | None = None
    gateway_ipv6: str | None = None
    static_routes: list[StaticRoute] | None = None
    disable_gateway_service: bool = False


class ExternalConnectivityRequest(_WithOptions):
    network_id: str
    endpoint_id: str


class DiscoveryData(WireModel):
    """A swarm node (``NodeDiscovery``, the only discovery type dockerd forwards)."""

    address: str = ""
    bind_address: str = ""
    is_self: bool = Field(default=False, alias="Self")


class DiscoveryRequest(WireModel):
    discovery_type: int = 1
    discovery_data: DiscoveryData | None = None


def _capabilities_reply(result: str | CapabilitiesReply | None, _: Any) -> CapabilitiesReply:
    if isinstance(result, CapabilitiesReply):
        return result
    return CapabilitiesReply(scope=result or "local")


_gw_alloc_check_reply = pair_reply(GwAllocCheckReply, "skip_ipv4", "skip_ipv6")


def _allocate_reply(
    result: AllocateNetworkReply | dict[str, str] | None, _: Any
) -> AllocateNetworkReply:
    if isinstance(result, AllocateNetworkReply):
        return result
    return AllocateNetworkReply(options=result)


def _create_endpoint_reply(
    result: CreateEndpointReply | EndpointInterface | None, _: Any
) -> CreateEndpointReply:
    if isinstance(result, CreateEndpointReply):
        return result
    return CreateEndpointReply(interface=result)


def _oper_info_reply(
    result: EndpointOperInfoReply | dict[str, Any] | None, _: Any
) -> EndpointOperInfoReply:
    if isinstance(result, EndpointOperInfoReply):
        return result
    return EndpointOperInfoReply(value=result or {})


def _join_reply(result: JoinReply | InterfaceName | None, _: Any) -> JoinReply:
    if isinstance(result, JoinReply):
        return result
    return JoinReply(interface_name=result)


def _ok(_: Any, __: Any) -> ErrReply:
    return ErrReply()


def _net(req: NetworkRequest | CreateNetworkRequest) -> str:
    return f"net={req.network_id[:12]}"


def _ep(req: EndpointRequest | CreateEndpointRequest | JoinRequest) -> str:
    return f"net={req.network_id[:12]} ep={req.endpoint_id[:12]}"


def _node(req: DiscoveryRequest) -> str | None:
    return f"node={req.discovery_data.address}" if req.discovery_data else None


_P = "/NetworkDriver."
_SLOW = Lane.SLOW

NETWORK = Protocol(
    implements="NetworkDriver",
    managed_type="docker.networkdriver/1.0",
    endpoints=(
        Endpoint(_P + "GetCapabilities", "network_capabilities", Empty, _capabilities_reply),
        Endpoint(
            _P + "GwAllocCheck",
            "gw_alloc_check",
            GwAllocCheckRequest,
            _gw_alloc_check_reply,
            required=False,
        ),
        Endpoint(
            _P + "CreateNetwork",
            "create_network",
            CreateNetworkRequest,
            _ok,
            lane=_SLOW,
            subject=_net,
        ),
        Endpoint(
            _P + "DeleteNetwork", "delete_network", NetworkRequest, _ok, lane=_SLOW, subject=_net
        ),
        Endpoint(
            _P + "AllocateNetwork",
            "allocate_network",
            AllocateNetworkRequest,
            _allocate_reply,
            required=False,
            lane=_SLOW,
            subject=_net,
        ),
        Endpoint(
            _P + "FreeNetwork",
            "free_network",
            NetworkRequest,
            _ok,
            required=False,
            lane=_SLOW,
            subject=_net,
        ),
        Endpoint(
            _P + "CreateEndpoint",
            "create_endpoint",
            CreateEndpointRequest,
            _create_endpoint_reply,
            lane=_SLOW,
            subject=_ep,
        ),
        Endpoint(
            _P + "EndpointOperInfo",
            "endpoint_oper_info",
            EndpointRequest,
            _oper_info_reply,
            subject=_ep,
        ),
        Endpoint(_P + "Join", "join", JoinRequest, _join_reply, lane=_SLOW, subject=_ep),
        Endpoint(_P + "Leave", "leave", EndpointRequest, _ok, lane=_SLOW, subject=_ep),
        Endpoint(
            _P + "DeleteEndpoint",
            "delete_endpoint",
            EndpointRequest,
            _ok,
            lane=_SLOW,
            subject=_ep,
        ),
        Endpoint(
            _P + "ProgramExternalConnectivity",
            "program_external_connectivity",
            ExternalConnectivityRequest,
            _ok,
            required=False,
            lane=_SLOW,
            subject=_ep,
        ),
        Endpoint(
            _P + "RevokeExternalConnectivity",
            "revoke_external_connectivity",
            EndpointRequest,
            _ok,
            required=False,
            lane=_SLOW,
            subject=_ep,
        ),
        Endpoint(
            _P + "DiscoverNew",
            "discover_new",
            DiscoveryRequest,
            _ok,
            required=False,
            lane=_SLOW,
            subject=_node,
        ),
        Endpoint(
            _P + "DiscoverDelete",
            "discover_delete",
            DiscoveryRequest,
            _ok,
            required=False,
            lane=_SLOW,
            subject=_node,
        ),
    ),
)


class NetworkDriver(Driver):
    """Base class of a network plugin. Methods may be ``def`` (worker thread) or ``async def``;
    raise a :class:`dockplug.PluginError` to fail a call (dockerd shows ``remote: <message>``).

    Optional endpoints answer 404 until overridden, but dockerd tolerates a 404 **only** for
    ``program_external_connectivity`` and ``revoke_external_connectivity``. The others are merely
    called conditionally: ``gw_alloc_check`` when capabilities say ``gw_alloc_checker``,
    ``allocate_network``/``free_network`` when ``scope`` is ``global`` (swarm manager), and
    ``discover_new``/``discover_delete`` when the connectivity scope is ``global``. Advertise one
    of those and the matching methods must be implemented.

    Method names carry a ``network_`` prefix where another protocol has the same method, so one
    class can be a network and an IPAM driver at once.
    """

    metrics_family: ClassVar[str] = "network"

    protocols: ClassVar[tuple[Protocol, ...]] = (NETWORK,)

    @nonblocking
    def network_capabilities(self, req: Empty) -> Any:
        """Scope ``local`` unless overridden (return a scope string or a CapabilitiesReply);
        ``GwAllocChecker`` is advertised exactly when ``gw_alloc_check`` is overridden."""
        checker = not getattr(type(self).gw_alloc_check, "__dockplug_placeholder__", False)
        return CapabilitiesReply(scope="local", gw_alloc_checker=checker)

    @placeholder
    def gw_alloc_check(self, req: GwAllocCheckRequest) -> Any:
        """Return ``(skip_ipv4, skip_ipv6)`` or a GwAllocCheckReply."""
        raise NotImplementedError

    @placeholder
    def create_network(self, req: CreateNetworkRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def delete_network(self, req: NetworkRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def allocate_network(self, req: AllocateNetworkRequest) -> Any:
        """Return the options (a string map) for the per-node CreateNetwork, or ``None``."""
        raise NotImplementedError

    @placeholder
    def free_network(self, req: NetworkRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def create_endpoint(self, req: CreateEndpointRequest) -> Any:
        """Return ``None`` to accept dockerd's addresses, or an EndpointInterface filling only
        fields the request left empty (changing a set one fails the call)."""
        raise NotImplementedError

    @nonblocking
    def endpoint_oper_info(self, req: EndpointRequest) -> Any:
        """Opaque data for ``docker inspect``; empty unless overridden (dict or reply model)."""
        return None

    @placeholder
    def join(self, req: JoinRequest) -> Any:
        """Return a JoinReply (or just an InterfaceName)."""
        raise NotImplementedError

    @placeholder
    def leave(self, req: EndpointRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def delete_endpoint(self, req: EndpointRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def program_external_connectivity(self, req: ExternalConnectivityRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def revoke_external_connectivity(self, req: EndpointRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def discover_new(self, req: DiscoveryRequest) -> Any:
        raise NotImplementedError

    @placeholder
    def discover_delete(self, req: DiscoveryRequest) -> Any:
        raise NotImplementedError
