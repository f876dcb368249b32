"""NetworkDriver checks (plugin-protocol.md §4): ``docker network create -d``, a container
connecting and disconnecting, ``docker network rm``, in dockerd's order and with its bodies.

When the harness runs in the plugin's network namespace it also checks that Join's ``SrcName``
is a real interface and that DeleteEndpoint removes it. Options (``--opt``): ``subnet`` (default
198.18.2.0/24), the network's IPv4 pool; ``subnet6`` (default 2001:db8:2::/64), the IPv6 pool of
the dual-stack check; other ``KEY=VALUE`` pairs are the driver's ``-o`` options
(``com.docker.network.generic``).
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dockplug.client import Reply
from dockplug.conformance.checks import (
    Check,
    Context,
    Outcome,
    Skip,
    announces,
    check,
    describe,
    failed,
    lowered,
    passed,
    reply_format,
    reply_json,
    warned,
)
from dockplug.conformance.robustness import reject_garbage
from dockplug.conformance.shapes import casing_problems

CHECKS: list[Check] = []
_P = "NetworkDriver."
GENERIC = "com.docker.network.generic"


def _hex() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def _visible(name: str) -> bool:
    """Is there an interface of that name in this process's network namespace?"""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


@dataclass
class NetworkContext(Context):
    networks: list[str] = field(default_factory=list)
    endpoints: list[tuple[str, str]] = field(default_factory=list)  # (network, endpoint)
    joined: list[tuple[str, str]] = field(default_factory=list)

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.opts.get("subnet", "198.18.2.0/24"), strict=False)

    @property
    def subnet6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(self.opts.get("subnet6", "2001:db8:2::/64"), strict=False)

    def options(self, legacy: bool = False, ipv6: bool = False) -> dict[str, Any]:
        """CreateNetwork's Options as dockerd sends them for ``docker network create -d P -o``
        (``legacy``: as 20.10 does, without enable_ipv4; ``ipv6``: with ``--ipv6``)."""
        generic = {k: v for k, v in self.opts.items() if k not in ("subnet", "subnet6")}
        options: dict[str, Any] = {GENERIC: generic, "com.docker.network.enable_ipv6": ipv6}
        if not legacy:
            options["com.docker.network.enable_ipv4"] = True
        return options

    def create_network(self, network_id: str, legacy: bool = False, ipv6: bool = False) -> Reply:
        """The body dockerd 28 sends (recorded: enable_ipv4 true, ``IPv6Data: []`` for an
        IPv4-only network, not the null of §4.2), or with ``legacy`` 20.10's (no enable_ipv4,
        ``IPv6Data: []`` as well); with ``ipv6`` the IPv6 pool and its gateway (``::1``, CIDR,
        as dockerd's IPAM gives it) in ``IPv6Data``."""
        gateway = f"{next(self.subnet.hosts())}/{self.subnet.prefixlen}"
        six = self.subnet6
        body = {
            "NetworkID": network_id,
            "Options": self.options(legacy, ipv6),
            "IPv4Data": [
                {"AddressSpace": "LocalDefault", "Pool": str(self.subnet), "Gateway": gateway}
            ],
            "IPv6Data": [
                {"AddressSpace": "LocalDefault", "Pool": str(six), "Gateway": f"{six[1]}/64"}
            ]
            if ipv6
            else [],
        }
        reply = self.call(_P + "CreateNetwork", body, expect_ok=True)
        if self.error(reply) is None:
            self.networks.append(network_id)
        return reply

    def create_endpoint(
        self, network_id: str, endpoint_id: str, address: str, address6: str = ""
    ) -> Reply:
        body = {
            "NetworkID": network_id,
            "EndpointID": endpoint_id,
            "Interface": {"Address": address, "AddressIPv6": address6, "MacAddress": ""},
            "Options": {
                "com.docker.network.endpoint.exposedports": [],
                "com.docker.network.portmap": [],
            },
        }
        reply = self.call(_P + "CreateEndpoint", body, expect_ok=True)
        if self.error(reply) is None:
            self.endpoints.append((network_id, endpoint_id))
        return reply

    def join(self, network_id: str, endpoint_id: str) -> Reply:
        body = {
            "NetworkID": network_id,
            "EndpointID": endpoint_id,
            "SandboxKey": f"/var/run/docker/netns/{uuid.uuid4().hex[:12]}",
            "Options": {
                "com.docker.network.endpoint.exposedports": [],
                "com.docker.network.portmap": [],
            },
        }
        reply = self.call(_P + "Join", body, expect_ok=True)
        if self.error(reply) is None:
            self.joined.append((network_id, endpoint_id))
        return reply

    def leave(self, network_id: str, endpoint_id: str) -> Reply:
        body = {"NetworkID": network_id, "EndpointID": endpoint_id}
        return self.undo(_P + "Leave", body, self.joined, (network_id, endpoint_id))

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> Reply:
        body = {"NetworkID": network_id, "EndpointID": endpoint_id}
        return self.undo(_P + "DeleteEndpoint", body, self.endpoints, (network_id, endpoint_id))

    def delete_network(self, network_id: str) -> Reply:
        body = {"NetworkID": network_id}
        return self.undo(_P + "DeleteNetwork", body, self.networks, network_id)

    def cleanup(self) -> list[str]:
        left: list[str] = []
        steps: list[tuple[str, Callable[..., Reply], tuple[str, ...]]] = [
            *((f"Leave {e[:12]}", self.leave, (n, e)) for n, e in reversed(self.joined)),
            *(
                (f"DeleteEndpoint {e[:12]}", self.delete_endpoint, (n, e))
                for n, e in reversed(self.endpoints)
            ),
            *((f"DeleteNetwork {n[:12]}", self.delete_network, (n,)) for n in self.networks[::-1]),
        ]
        for what, func, args in steps:
            try:
                if (err := self.error(func(*args))) is not None:
                    left.append(f"{what}: {err[:120]}")
            except Exception as exc:
                left.append(f"{what}: {exc!r}")
        return left


def _ok(ctx: NetworkContext, reply: Reply, what: str) -> str | None:
    if ctx.error(reply) is not None:
        return f"{what}: {describe(reply)}"
    if not isinstance(reply_json(reply), dict):
        return f"{what}: HTTP 200 but the body is not a JSON object: {describe(reply)}"
    return None


def _main(ctx: NetworkContext) -> str:
    network_id: str | None = ctx.state.get("network")
    if network_id is None:
        raise Skip("CreateNetwork failed (N04)")
    return network_id


def _endpoint(ctx: NetworkContext) -> tuple[str, str]:
    endpoint_id: str | None = ctx.state.get("endpoint")
    if endpoint_id is None:
        raise Skip("CreateEndpoint failed (N05)")
    return _main(ctx), endpoint_id


def _optional(ctx: NetworkContext, endpoint: str, body: Any, needed: bool, why: str) -> Outcome:
    reply = ctx.call(_P + endpoint, body)
    if reply.status == 404:
        if needed:
            return failed(f"404, but {why}: dockerd will call it and fail")
        return passed("404: optional, dockerd tolerates it here")
    if (bad := _ok(ctx, reply, endpoint)) is not None:
        return failed(bad)
    return passed(describe(reply))


@check(CHECKS, "N01", "Activate announces NetworkDriver", "protocol §2")
def activate(ctx: NetworkContext) -> Outcome:
    return announces(ctx, "NetworkDriver")


@check(CHECKS, "N02", "GetCapabilities (empty body): Scope exactly local/global", "§4.1")
def capabilities(ctx: NetworkContext) -> Outcome:
    reply = ctx.call(_P + "GetCapabilities", expect_ok=True)
    if (bad := _ok(ctx, reply, "GetCapabilities")) is not None:
        return failed(f"{bad}: dockerd cannot register the driver")
    data = reply_json(reply)
    keys = ("Scope", "ConnectivityScope", "GwAllocChecker", "Err")
    problems = casing_problems(data, keys, "reply")
    low = lowered(data)
    scope, conn, checker = (
        low.get("scope"),
        low.get("connectivityscope", ""),
        low.get("gwallocchecker"),
    )
    if scope not in ("local", "global"):
        problems.append(
            f"Scope {scope!r} is not exactly 'local' or 'global': registration fails "
            "and the driver 'cannot be resolved'"
        )
    if conn not in ("local", "global", "", None):
        problems.append(f"ConnectivityScope {conn!r} is not 'local', 'global' or ''")
    if checker is not None and not isinstance(checker, bool):
        problems.append(f"GwAllocChecker {checker!r:.40} is not a boolean")
    if problems:
        return failed("; ".join(problems))
    ctx.state["caps"] = {"scope": scope, "conn": conn or scope, "checker": bool(checker)}
    return passed(describe(reply))


@check(CHECKS, "N03", "GwAllocCheck when advertised", "protocol §4.1-4.2 (v28+)")
def gw_alloc_check(ctx: NetworkContext) -> Outcome:
    if not ctx.state.get("caps", {}).get("checker"):
        raise Skip("GwAllocChecker is not advertised")
    reply = ctx.call(_P + "GwAllocCheck", {"Options": ctx.options()}, expect_ok=True)
    if (bad := _ok(ctx, reply, "GwAllocCheck")) is not None:
        return failed(f"{bad}; advertised, so dockerd calls it before every CreateNetwork")
    data = reply_json(reply)
    problems = casing_problems(data, ("SkipIPv4", "SkipIPv6", "Err"), "reply")
    for key in ("skipipv4", "skipipv6"):
        if (value := lowered(data).get(key)) is not None and not isinstance(value, bool):
            problems.append(f"{key} {value!r:.40} is not a boolean")
    return failed("; ".join(problems)) if problems else passed(describe(reply))


@check(CHECKS, "N04", "CreateNetwork with dockerd's IPv4Data and Options", "protocol §4.2")
def create_network(ctx: NetworkContext) -> Outcome:
    network_id = _hex()
    reply = ctx.create_network(network_id)
    if (bad := _ok(ctx, reply, "CreateNetwork")) is not None:
        return failed(bad)
    ctx.state["network"] = network_id
    return passed(f"{network_id[:12]} {ctx.subnet}: {describe(reply)}")


@check(CHECKS, "N05", "CreateEndpoint keeps dockerd's address", "protocol §4.2 CreateEndpoint")
def create_endpoint(ctx: NetworkContext) -> Outcome:
    network_id = _main(ctx)
    endpoint_id = _hex()
    hosts = ctx.subnet.hosts()
    next(hosts)
    address = f"{next(hosts)}/{ctx.subnet.prefixlen}"
    reply = ctx.create_endpoint(network_id, endpoint_id, address)
    if (bad := _ok(ctx, reply, "CreateEndpoint")) is not None:
        return failed(bad)
    ctx.state["endpoint"] = endpoint_id
    data = reply_json(reply)
    problems = casing_problems(data, ("Interface", "Err"), "reply")
    iface = lowered(data).get("interface")
    if iface is not None:
        if not isinstance(iface, dict):
            return failed(f"Interface {iface!r:.60} is not an object or null")
        problems += casing_problems(iface, ("Address", "AddressIPv6", "MacAddress"), "Interface")
        got = lowered(iface)
        if got.get("address") not in (None, "", address):
            problems.append(
                f"Interface.Address {got['address']!r} changes dockerd's {address}: "
                '"driver modified interface address", the endpoint is rolled back'
            )
        mac = got.get("macaddress")
        if mac and not (isinstance(mac, str) and len(mac.split(":")) == 6):
            problems.append(f"MacAddress {mac!r} is not colon-hex")
    if problems:
        return failed("; ".join(problems))
    return passed(describe(reply))


@check(CHECKS, "N06", 'EndpointOperInfo answers {"Value": {...}}', "protocol §4.2")
def oper_info(ctx: NetworkContext) -> Outcome:
    network_id, endpoint_id = _endpoint(ctx)
    body = {"NetworkID": network_id, "EndpointID": endpoint_id}
    reply = ctx.call(_P + "EndpointOperInfo", body, expect_ok=True)
    if (bad := _ok(ctx, reply, "EndpointOperInfo")) is not None:
        return failed(f"{bad}; dockerd calls it on start and inspect")
    data = reply_json(reply)
    value = lowered(data).get("value")
    problems = casing_problems(data, ("Value", "Err"), "reply")
    if value is not None and not isinstance(value, dict):
        problems.append(f"Value {value!r:.60} is not an object")
    return failed("; ".join(problems)) if problems else passed(describe(reply))


@check(CHECKS, "N07", "Join: an interface to move, a plain-IP gateway", "protocol §4.2 Join")
def join(ctx: NetworkContext) -> Outcome:
    network_id, endpoint_id = _endpoint(ctx)
    reply = ctx.join(network_id, endpoint_id)
    if (bad := _ok(ctx, reply, "Join")) is not None:
        return failed(bad)
    data = reply_json(reply)
    keys = ("InterfaceName", "Gateway", "GatewayIPv6", "StaticRoutes", "DisableGatewayService")
    problems = casing_problems(data, (*keys, "Err"), "reply")
    low = lowered(data)
    name = low.get("interfacename")
    src = lowered(name).get("srcname") if isinstance(name, dict) else None
    if not isinstance(src, str) or not src or not isinstance(name, dict):
        problems.append(f"InterfaceName.SrcName is {src!r}: dockerd has no interface to move")
    else:
        problems += casing_problems(name, ("SrcName", "DstPrefix"), "InterfaceName")
        ctx.state["src"] = src
    for key in ("gateway", "gatewayipv6"):
        gw = low.get(key)
        if gw in (None, ""):
            continue
        try:
            ip = ipaddress.ip_address(str(gw))
        except ValueError:
            problems.append(f"{key} {gw!r} is not a plain IP (dockerd rejects CIDR here)")
            continue
        if ip.version == 4 and ip not in ctx.subnet:
            problems.append(f"Gateway {ip} is outside the network's pool {ctx.subnet}")
    for route in low.get("staticroutes") or []:
        r = lowered(route)
        if r.get("routetype", 0) not in (0, 1) or (
            r.get("routetype", 0) == 0 and not r.get("nexthop")
        ):
            problems.append(f"static route {route!r:.80}: RouteType 0 needs a NextHop")
    if problems:
        return failed("; ".join(problems))
    if isinstance(src, str) and _visible(src):
        ctx.state["src_visible"] = True
        return passed(f"{describe(reply)}; {src} exists")
    return passed(f"{describe(reply)} ({src} not visible from this network namespace)")


@check(CHECKS, "N08", "ProgramExternalConnectivity: 200, or 404 (optional)", "protocol §4.2")
def program(ctx: NetworkContext) -> Outcome:
    network_id, endpoint_id = _endpoint(ctx)
    # dockerd 28's options (recorded); 20.10 sends the same without no_proxy_6to4
    options = {
        "com.docker.network.driver.private.no_proxy_6to4": False,
        "com.docker.network.endpoint.exposedports": [],
        "com.docker.network.portmap": [],
    }
    body = {"NetworkID": network_id, "EndpointID": endpoint_id, "Options": options}
    return _optional(ctx, "ProgramExternalConnectivity", body, False, "")


@check(CHECKS, "N09", "RevokeExternalConnectivity: 200, or 404 (optional)", "protocol §4.2")
def revoke(ctx: NetworkContext) -> Outcome:
    network_id, endpoint_id = _endpoint(ctx)
    body = {"NetworkID": network_id, "EndpointID": endpoint_id}
    return _optional(ctx, "RevokeExternalConnectivity", body, False, "")


@check(CHECKS, "N10", "Calls on unknown networks and endpoints fail", "protocol §4")
def unknown(ctx: NetworkContext) -> Outcome:
    ghost_net, ghost_ep = _hex(), _hex()
    accepted = []
    reply = ctx.create_endpoint(ghost_net, ghost_ep, f"{ctx.subnet[9]}/{ctx.subnet.prefixlen}")
    if ctx.error(reply) is None:
        accepted.append(f"CreateEndpoint on a network never created: {describe(reply)}")
    network_id = ctx.state.get("network")
    if network_id is not None:
        reply = ctx.join(network_id, ghost_ep)
        if ctx.error(reply) is None:
            accepted.append(f"Join of an endpoint never created: {describe(reply)}")
    if accepted:
        return failed("; ".join(accepted) + " (dockerd would carry on with nothing behind it)")
    return passed(describe(reply))


@check(CHECKS, "N11", "Leave, then DeleteEndpoint removes the interface", "protocol §4.2-4.3")
def leave_delete(ctx: NetworkContext) -> Outcome:
    network_id, endpoint_id = _endpoint(ctx)
    if (network_id, endpoint_id) in ctx.joined:
        reply = ctx.leave(network_id, endpoint_id)
        if (bad := _ok(ctx, reply, "Leave")) is not None:
            return failed(bad)
    reply = ctx.delete_endpoint(network_id, endpoint_id)
    if (bad := _ok(ctx, reply, "DeleteEndpoint")) is not None:
        return failed(bad)
    src = ctx.state.get("src")
    if ctx.state.get("src_visible") and src and _visible(src):
        return failed(f"{src} still exists after DeleteEndpoint (one leaked veth per container)")
    return passed("Leave and DeleteEndpoint succeeded" + (f"; {src} is gone" if src else ""))


@check(CHECKS, "N12", "Swarm-only endpoints: 404 unless the scope needs them", "protocol §4.1")
def swarm(ctx: NetworkContext) -> Outcome:
    caps = ctx.state.get("caps") or {}
    network_id = _hex()
    allocate = {"NetworkID": network_id, "Options": {}, "IPv4Data": [], "IPv6Data": []}
    results = [
        ("AllocateNetwork", allocate, caps.get("scope") == "global", "Scope is global"),
        (
            "FreeNetwork",
            {"NetworkID": network_id},
            caps.get("scope") == "global",
            "Scope is global",
        ),
        (
            "DiscoverNew",
            {"DiscoveryType": 1, "DiscoveryData": {"Address": "127.0.0.1", "Self": True}},
            caps.get("conn") == "global",
            "ConnectivityScope is global",
        ),
    ]
    notes = []
    for endpoint, body, needed, why in results:
        outcome = _optional(ctx, endpoint, body, needed, why)
        if outcome.result.value == "fail":
            return failed(f"{endpoint}: {outcome.evidence}")
        notes.append(f"{endpoint} {outcome.evidence.split(':')[0]}")
    return passed("; ".join(notes))


@check(CHECKS, "N13", "DeleteNetwork", "protocol §4.2-4.3")
def delete_network(ctx: NetworkContext) -> Outcome:
    network_id = _main(ctx)
    for n, e in [x for x in ctx.endpoints if x[0] == network_id]:
        ctx.delete_endpoint(n, e)
    reply = ctx.delete_network(network_id)
    if (bad := _ok(ctx, reply, "DeleteNetwork")) is not None:
        return failed(bad)
    again = ctx.create_endpoint(network_id, _hex(), f"{ctx.subnet[5]}/{ctx.subnet.prefixlen}")
    if ctx.error(again) is None:
        return warned(f"CreateEndpoint on the deleted network still succeeds: {describe(again)}")
    return passed(f"{describe(reply)}; the network is gone")


@check(CHECKS, "N14", "CreateNetwork as dockerd 20.10 sends it, then DeleteNetwork", "§4.2")
def create_legacy(ctx: NetworkContext) -> Outcome:
    network_id = _hex()
    reply = ctx.create_network(network_id, legacy=True)
    if (bad := _ok(ctx, reply, "CreateNetwork without enable_ipv4, IPv6Data []")) is not None:
        return failed(bad)
    reply = ctx.delete_network(network_id)
    if (bad := _ok(ctx, reply, "DeleteNetwork")) is not None:
        return failed(bad)
    return passed("created and deleted")


@check(CHECKS, "N15", "Replies: exactly 200 + JSON, Err on error", "protocol §1.6")
def replies(ctx: NetworkContext) -> Outcome:
    return reply_format(ctx)


@check(CHECKS, "N16", "Bad bodies get an error; the plugin stays up", "protocol §4")
def garbage(ctx: NetworkContext) -> Outcome:
    ids = {"NetworkID": "str", "EndpointID": "str"}
    options = {"Options": "struct"}  # map[string]interface{}: any object decodes
    endpoints = {
        _P + "CreateNetwork": (
            True,
            {"NetworkID": "str", "IPv4Data": "list", "IPv6Data": "list"} | options,
        ),
        _P + "CreateEndpoint": (True, ids | options | {"Interface": "struct"}),
        _P + "Join": (True, ids | options | {"SandboxKey": "str"}),
        _P + "Leave": (False, ids),
        _P + "DeleteEndpoint": (False, ids),
        _P + "DeleteNetwork": (False, {"NetworkID": "str"}),
    }
    return reject_garbage(ctx, endpoints)


@check(CHECKS, "N17", "Dual stack (--ipv6): IPv6Data, AddressIPv6, GatewayIPv6", "§4.2")
def dual_stack(ctx: NetworkContext) -> Outcome:
    """``docker network create --ipv6``: the IPv6 pool in IPv6Data, then per container the
    IPAM's IPv6 address in ``AddressIPv6`` (which the reply must leave alone) and Join's
    ``GatewayIPv6`` (a plain IP: dockerd routes IPv6 through it). A plugin without IPv6 passes
    by refusing the network with an Err, so ``--ipv6`` fails cleanly."""
    network_id = _hex()
    six = ctx.subnet6
    reply = ctx.create_network(network_id, ipv6=True)
    if ctx.error(reply) is not None:
        return passed(f"no IPv6 ({describe(reply)}): docker network create --ipv6 fails cleanly")
    if (bad := _ok(ctx, reply, "CreateNetwork with IPv6Data")) is not None:
        return failed(bad)
    endpoint_id = _hex()
    address6 = f"{six[6]}/{six.prefixlen}"
    reply = ctx.create_endpoint(
        network_id, endpoint_id, f"{ctx.subnet[6]}/{ctx.subnet.prefixlen}", address6
    )
    if (bad := _ok(ctx, reply, f"CreateEndpoint with AddressIPv6 {address6}")) is not None:
        return failed(f"the IPv6 network was accepted but not its endpoint: {bad}")
    iface = lowered(lowered(reply_json(reply)).get("interface"))
    if iface.get("addressipv6") not in (None, ""):
        return failed(
            f"the reply sets AddressIPv6 {iface.get('addressipv6')!r} dockerd already gave: "
            "dockerd fails with 'driver modified interface address'"
        )
    reply = ctx.join(network_id, endpoint_id)
    if (bad := _ok(ctx, reply, "Join")) is not None:
        return failed(bad)
    gw = lowered(reply_json(reply)).get("gatewayipv6")
    ctx.leave(network_id, endpoint_id)
    ctx.delete_endpoint(network_id, endpoint_id)
    ctx.delete_network(network_id)
    if gw in (None, ""):
        return warned("Join gave no GatewayIPv6: containers get no IPv6 default route")
    try:
        ip = ipaddress.ip_address(str(gw))
    except ValueError:
        return failed(f"GatewayIPv6 {gw!r} is not a plain IP (dockerd rejects CIDR here)")
    if ip not in six:
        return failed(f"GatewayIPv6 {ip} is outside the network's IPv6 pool {six}")
    return passed(f"GatewayIPv6 {ip}; endpoint {address6} kept")
