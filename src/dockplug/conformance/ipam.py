"""IpamDriver checks (plugin-protocol.md §5): the calls ``docker network create --ipam-driver``,
``docker run --network`` and ``docker network rm`` make, in dockerd's order, with dockerd's
reading of errors: on a 200 reply only ``Error`` counts (``Err`` there is a success).

Options (``--opt``): ``subnet`` (default 198.18.0.0/24) is the pool asked for by CIDR,
``subnet_small`` (default 198.18.1.0/29) the one filled up; pick ranges the plugin may hand out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from dockplug.client import Reply
from dockplug.conformance.checks import (
    Check,
    Context,
    Outcome,
    Skip,
    announces,
    check,
    concurrently,
    connection_failures,
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
GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}
_P = "IpamDriver."
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass
class IpamContext(Context):
    """Pools and addresses this run holds, released again in reverse order at the end."""

    pools: list[str] = field(default_factory=list)
    addresses: list[tuple[str, str]] = field(default_factory=list)  # (pool id, plain IP)

    def error(self, reply: Reply) -> str | None:
        """dockerd's IPAM reading: non-200 fails (message from ``Err``); on 200 only ``Error``."""
        data = reply_json(reply)
        if reply.status != 200:
            if isinstance(data, dict) and data.get("Err"):
                return str(data["Err"])
            return reply.raw.decode("utf-8", "replace") or f"HTTP {reply.status}"
        if not isinstance(data, dict):
            return f"HTTP 200 with a body that is not a JSON object: {reply.raw[:80]!r}"
        return str(data["Error"]) if data.get("Error") else None

    def request_pool(self, pool: str = "", v6: bool = False, space: str = "") -> Reply:
        body = {
            "AddressSpace": space or self.state.get("space", "LocalDefault"),
            "Pool": pool,
            "SubPool": "",
            "Options": None,
            "V6": v6,
        }
        self.call(_P + "GetDefaultAddressSpaces")  # dockerd asks before every RequestPool
        reply = self.call(_P + "RequestPool", body, expect_ok=True)
        pool_id = lowered(reply_json(reply)).get("poolid")
        if self.error(reply) is None and isinstance(pool_id, str) and pool_id:
            self.pools.append(pool_id)
        return reply

    def request_address(
        self, pool_id: str, address: str = "", options: dict[str, str] | None = None
    ) -> Reply:
        body = {"PoolID": pool_id, "Address": address, "Options": options}
        reply = self.call(_P + "RequestAddress", body, expect_ok=None)
        got = lowered(reply_json(reply)).get("address")
        if self.error(reply) is None and isinstance(got, str) and "/" in got:
            self.addresses.append((pool_id, got.split("/")[0]))
        return reply

    def release_address(self, pool_id: str, address: str) -> Reply:
        body = {"PoolID": pool_id, "Address": address}
        return self.undo(_P + "ReleaseAddress", body, self.addresses, (pool_id, address))

    def release_pool(self, pool_id: str) -> Reply:
        return self.undo(_P + "ReleasePool", {"PoolID": pool_id}, self.pools, pool_id)

    def cleanup(self) -> list[str]:
        left: list[str] = []
        for pool_id, address in reversed(list(self.addresses)):
            try:
                if (err := self.error(self.release_address(pool_id, address))) is not None:
                    left.append(f"ReleaseAddress {address}: {err[:120]}")
            except Exception as exc:
                left.append(f"ReleaseAddress {address}: {exc!r}")
        for pool_id in reversed(list(self.pools)):
            try:
                if (err := self.error(self.release_pool(pool_id))) is not None:
                    left.append(f"ReleasePool {pool_id}: {err[:120]}")
            except Exception as exc:
                left.append(f"ReleasePool {pool_id}: {exc!r}")
        return left


def _err(ctx: IpamContext, reply: Reply, what: str) -> str | None:
    """The evidence if the call failed as dockerd reads it (with a hint for the Err trap)."""
    error = ctx.error(reply)
    if error is not None:
        return f"{what}: {describe(reply)}"
    return None


def _err_on_200(reply: Reply) -> str | None:
    data = reply_json(reply)
    if reply.status == 200 and isinstance(data, dict) and data.get("Err") and not data.get("Error"):
        return (
            f'{describe(reply)}: "Err" on a 200 reply, which dockerd reads as success '
            '(IPAM errors go in "Error", or answer non-200)'
        )
    return None


def _failure(ctx: IpamContext, reply: Reply, what: str) -> str | None:
    """The evidence if the reply is the Err-on-200 trap or failed as dockerd reads it."""
    return _err_on_200(reply) or _err(ctx, reply, what)


def _pool_of(ctx: IpamContext, reply: Reply, v6: bool) -> tuple[str, Network] | str:
    """(PoolID, pool) from a RequestPool reply, or the evidence of what is wrong."""
    if (bad := _failure(ctx, reply, "RequestPool")) is not None:
        return bad
    data = reply_json(reply)
    problems = casing_problems(data, ("PoolID", "Pool", "Data", "Error"), "reply")
    low = lowered(data)
    pool_id, pool, extra = low.get("poolid"), low.get("pool"), low.get("data")
    if not isinstance(pool_id, str) or not pool_id:
        problems.append(f"PoolID {pool_id!r} is not a non-empty string")
    network: Network | None = None
    try:
        network = ipaddress.ip_network(str(pool), strict=False)
        if "/" not in str(pool):
            problems.append(f"Pool {pool!r} has no prefix length (dockerd parses a CIDR)")
        elif network.version != (6 if v6 else 4):
            problems.append(f"Pool {pool} is IPv{network.version} for V6={v6}")
    except ValueError:
        problems.append(f"Pool {pool!r} is not a CIDR prefix")
    if extra is not None and not (
        isinstance(extra, dict) and all(isinstance(v, str) for v in extra.values())
    ):
        problems.append(f"Data {extra!r:.60} is not a string map")
    if problems or network is None or not isinstance(pool_id, str):
        return "; ".join(problems) + f" ({describe(reply)})"
    return pool_id, network


def _address_of(ctx: IpamContext, reply: Reply, pool: Network, what: str) -> Interface | str:
    """The CIDR address of a RequestAddress reply, or the evidence of what is wrong."""
    if (bad := _failure(ctx, reply, what)) is not None:
        return bad
    data = reply_json(reply)
    problems = casing_problems(data, ("Address", "Data", "Error"), "reply")
    address = lowered(data).get("address")
    if not isinstance(address, str) or not address:
        return f'{what}: empty or missing Address (dockerd: "no IP returned"): {describe(reply)}'
    if "/" not in address:
        return f"{what}: Address {address!r} is a plain IP; dockerd wants CIDR (A.B.C.D/len)"
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        return f"{what}: Address {address!r} is not a CIDR address"
    if iface.ip not in pool:
        problems.append(f"{iface} is outside the pool {pool}")
    elif iface.network.prefixlen != pool.prefixlen:
        problems.append(
            f"{iface} has prefix length /{iface.network.prefixlen}, the pool /{pool.prefixlen}"
        )
    if problems:
        return f"{what}: " + "; ".join(problems)
    return iface


def _pool(ctx: IpamContext, key: str) -> tuple[str, Network]:
    got = ctx.state.get(key)
    if got is None:
        raise Skip(f"no pool from the earlier RequestPool ({key})")
    pool: tuple[str, Network] = got
    return pool


@check(CHECKS, "I01", "Activate announces IpamDriver", "protocol §2")
def activate(ctx: IpamContext) -> Outcome:
    return announces(ctx, "IpamDriver")


@check(CHECKS, "I02", "GetCapabilities (empty body): two booleans", "protocol §5")
def capabilities(ctx: IpamContext) -> Outcome:
    reply = ctx.call(_P + "GetCapabilities")
    if reply.status == 404:
        return passed("404: optional; dockerd registers the driver with no capabilities")
    if (bad := _err(ctx, reply, "GetCapabilities")) is not None:
        return warned(f"{bad}; dockerd then registers the driver with no capabilities")
    data = reply_json(reply)
    keys = ("RequiresMACAddress", "RequiresRequestReplay")
    problems = casing_problems(data, (*keys, "Error"), "reply")
    low = lowered(data)
    for key in keys:
        value = low.get(key.lower())
        if value is not None and not isinstance(value, bool):
            problems.append(f"{key} is {value!r:.40}, not a boolean (Go fails to decode it)")
    if problems:
        return failed("; ".join(problems))
    ctx.state["requires_mac"] = bool(low.get("requiresmacaddress"))
    return passed(describe(reply))


@check(CHECKS, "I03", "GetDefaultAddressSpaces (empty body): two names", "protocol §5")
def address_spaces(ctx: IpamContext) -> Outcome:
    reply = ctx.call(_P + "GetDefaultAddressSpaces", expect_ok=True)
    if (bad := _err(ctx, reply, "GetDefaultAddressSpaces")) is not None:
        return failed(f"{bad}; dockerd calls it before every RequestPool")
    keys = ("LocalDefaultAddressSpace", "GlobalDefaultAddressSpace")
    data = reply_json(reply)
    problems = casing_problems(data, (*keys, "Error"), "reply")
    low = lowered(data)
    for key in keys:
        value = low.get(key.lower())
        if not isinstance(value, str) or not value:
            problems.append(f"{key} is {value!r:.40}, not a non-empty string")
    if problems:
        return failed("; ".join(problems))
    ctx.state["space"] = low["localdefaultaddressspace"]
    return passed(describe(reply))


@check(CHECKS, "I04", "RequestPool without a subnet (network create)", "protocol §5, §4.3")
def pool_any(ctx: IpamContext) -> Outcome:
    got = _pool_of(ctx, ctx.request_pool(), v6=False)
    if isinstance(got, str):
        return failed(got)
    ctx.state["any"] = got
    return passed(f"PoolID {got[0]!r}, Pool {got[1]}")


@check(
    CHECKS, "I05", "A second RequestPool gets a distinct pool", "protocol §5 overlap re-requests"
)
def pool_distinct(ctx: IpamContext) -> Outcome:
    first_id, first = _pool(ctx, "any")
    got = _pool_of(ctx, ctx.request_pool(), v6=False)
    if isinstance(got, str):
        return failed(f"second pool: {got}")
    pool_id, pool = got
    if pool.overlaps(first):
        return failed(
            f"{pool} overlaps {first}, which is still held: dockerd keeps asking while the "
            "pool overlaps one in use, and loops on a driver that repeats itself"
        )
    if pool_id == first_id:
        return failed(f"the same PoolID {pool_id!r} for two different pools")
    return passed(f"{first} and {pool}")


@check(CHECKS, "I06", "RequestPool with a subnet (--subnet)", "protocol §5")
def pool_subnet(ctx: IpamContext) -> Outcome:
    wanted = ipaddress.ip_network(ctx.opts.get("subnet", "198.18.0.0/24"), strict=False)
    got = _pool_of(ctx, ctx.request_pool(str(wanted)), v6=False)
    if isinstance(got, str):
        return failed(f"{got}; if that range is not the plugin's, pick one with --opt subnet=CIDR")
    if got[1] != wanted:
        return failed(f"asked for {wanted}, got {got[1]}")
    ctx.state["subnet"] = got
    return passed(f"PoolID {got[0]!r}, Pool {got[1]}")


@check(CHECKS, "I07", "Gateway RequestAddress: a CIDR address in the pool", "protocol §5")
def gateway(ctx: IpamContext) -> Outcome:
    pool_id, pool = _pool(ctx, "subnet")
    reply = ctx.request_address(pool_id, "", dict(GATEWAY))
    got = _address_of(ctx, reply, pool, "gateway RequestAddress")
    if isinstance(got, str):
        return failed(got)
    ctx.state["gateway"] = got
    if got.ip in (pool.network_address, pool.broadcast_address) and pool.prefixlen < 31:
        return failed(f"gateway {got} is the pool's network or broadcast address")
    return passed(f"gateway {got}")


@check(CHECKS, "I08", "Container addresses: distinct, never the gateway", "protocol §5")
def containers(ctx: IpamContext) -> Outcome:
    pool_id, pool = _pool(ctx, "subnet")
    gw: Interface | None = ctx.state.get("gateway")
    options = {"com.docker.network.endpoint.macaddress": "02:42:c6:12:00:02"}
    got: list[Interface] = []
    for i in range(3):
        reply = ctx.request_address(pool_id, "", options if ctx.state.get("requires_mac") else None)
        one = _address_of(ctx, reply, pool, f"container RequestAddress #{i + 1}")
        if isinstance(one, str):
            return failed(one)
        got.append(one)
    ips = [g.ip for g in got]
    if len(set(ips)) != len(ips):
        return failed(f"the same address twice: {[str(g) for g in got]}")
    if gw is not None and gw.ip in ips:
        return failed(f"handed out the gateway {gw} to a container")
    ctx.state["container_ips"] = got
    return passed(", ".join(str(g) for g in got))


@check(CHECKS, "I09", "RequestAddress of a specific IP; a taken one is refused", "protocol §5")
def specific(ctx: IpamContext) -> Outcome:
    pool_id, pool = _pool(ctx, "subnet")
    taken: list[Interface] = list(ctx.state.get("container_ips", []))
    used = {t.ip for t in taken}
    if (gw := ctx.state.get("gateway")) is not None:
        used.add(gw.ip)
    free = next((ip for ip in pool.hosts() if ip not in used and int(ip) % 7 == 3), None)
    if free is None:
        raise Skip(f"no free address left in {pool}")
    reply = ctx.request_address(pool_id, str(free))  # --ip: a plain IP in the request
    got = _address_of(ctx, reply, pool, f"RequestAddress {free}")
    if isinstance(got, str):
        return failed(got)
    if got.ip != free:
        return failed(f"asked for {free}, got {got}")
    again = ctx.request_address(pool_id, str(free))
    if (trap := _err_on_200(again)) is not None:
        return failed(f"second request of {free}: {trap}")
    if ctx.error(again) is None:
        return failed(f"{free} handed out twice: {describe(again)} (two containers, one IP)")
    return passed(f"{got}; the second request: {describe(again)}")


@check(CHECKS, "I10", "RequestAddress on an unknown PoolID fails with Error/Err", "protocol §5")
def unknown_pool(ctx: IpamContext) -> Outcome:
    reply = ctx.request_address(ctx.name("nopool"), "")
    if (trap := _err_on_200(reply)) is not None:
        return failed(trap)
    if ctx.error(reply) is None:
        return failed(f"an address from a pool that does not exist: {describe(reply)}")
    return passed(describe(reply))


@check(CHECKS, "I11", "A full pool answers an error, not a duplicate", "protocol §5")
def exhausted(ctx: IpamContext) -> Outcome:
    small = ipaddress.ip_network(ctx.opts.get("subnet_small", "198.18.1.0/29"), strict=False)
    got = _pool_of(ctx, ctx.request_pool(str(small)), v6=False)
    if isinstance(got, str):
        return warned(f"could not get {small} to fill (--opt subnet_small=CIDR): {got}")
    pool_id, pool = got
    seen: list[Interface] = []
    for _ in range(pool.num_addresses + 2):
        reply = ctx.request_address(pool_id, "")
        if (trap := _err_on_200(reply)) is not None:
            return failed(trap)
        if ctx.error(reply) is not None:
            return passed(f"{len(seen)} addresses, then {describe(reply)}")
        one = _address_of(ctx, reply, pool, "RequestAddress")
        if isinstance(one, str):
            return failed(one)
        if one.ip in {s.ip for s in seen}:
            return failed(f"{one} handed out twice in {pool}")
        seen.append(one)
    return failed(f"{len(seen)} addresses from {pool}, which has {pool.num_addresses}")


@check(CHECKS, "I12", "ReleaseAddress (plain IP) makes the address free again", "protocol §5")
def release_address(ctx: IpamContext) -> Outcome:
    pool_id, pool = _pool(ctx, "subnet")
    held: list[Interface] = ctx.state.get("container_ips", [])
    if not held:
        raise Skip("no container address was handed out (I08)")
    ip = str(held[0].ip)
    reply = ctx.release_address(pool_id, ip)
    if (bad := _failure(ctx, reply, f"ReleaseAddress {ip}")) is not None:
        return failed(bad)
    again = ctx.request_address(pool_id, ip)
    got = _address_of(ctx, again, pool, f"RequestAddress {ip} after its release")
    if isinstance(got, str):
        return failed(got)
    return passed(f"released {ip} and got it again as {got}")


@check(CHECKS, "I13", "ReleasePool, after which its addresses are refused", "protocol §5, §4.3")
def release_pool(ctx: IpamContext) -> Outcome:
    pool_id, _ = _pool(ctx, "subnet")
    for held_pool, address in [a for a in ctx.addresses if a[0] == pool_id]:
        ctx.release_address(held_pool, address)  # dockerd releases the gateway first
    reply = ctx.release_pool(pool_id)
    if (bad := _failure(ctx, reply, "ReleasePool")) is not None:
        return failed(bad)
    ctx.state.pop("subnet")
    after = ctx.request_address(pool_id, "")
    if ctx.error(after) is None:
        return warned(f"RequestAddress on the released pool still succeeds: {describe(after)}")
    return passed(f"then RequestAddress: {describe(after)}")


@check(CHECKS, "I14", "RequestPool V6: an IPv6 pool or a clear error", "protocol §5")
def pool_v6(ctx: IpamContext) -> Outcome:
    reply = ctx.request_pool(v6=True)
    if (trap := _err_on_200(reply)) is not None:
        return failed(trap)
    if ctx.error(reply) is not None:
        return passed(f"no IPv6 ({describe(reply)}): docker network create --ipv6 fails cleanly")
    got = _pool_of(ctx, reply, v6=True)
    if isinstance(got, str):
        return failed(got)
    return passed(f"PoolID {got[0]!r}, Pool {got[1]}")


@check(CHECKS, "I15", "20 RequestAddress calls at once get 20 addresses", "protocol §1.9")
def parallel(ctx: IpamContext) -> Outcome:
    pool_id, pool = _pool(ctx, "any")
    if pool.num_addresses < 64:
        raise Skip(f"{pool} is too small")

    body = {"PoolID": pool_id, "Address": "", "Options": None}
    results = concurrently(ctx, _P + "RequestAddress", body)
    replies = [r for r in results if isinstance(r, Reply)]
    for reply in replies:  # held before judging, so cleanup releases every one
        address = lowered(reply_json(reply)).get("address")
        if ctx.error(reply) is None and isinstance(address, str) and "/" in address:
            ctx.addresses.append((pool_id, address.split("/")[0]))
    if (lost := connection_failures(results)) is not None:
        return failed(lost)
    got: list[Interface] = []
    problems: list[str] = []
    for reply in replies:
        address = _address_of(ctx, reply, pool, "RequestAddress")
        if isinstance(address, str):
            problems.append(address)
        else:
            got.append(address)
    if problems:
        return failed(f"{len(problems)}/20 failed, e.g. {problems[0]}")
    if len({g.ip for g in got}) != len(got):
        dupes = sorted({str(g.ip) for g in got if [x.ip for x in got].count(g.ip) > 1})
        return failed(f"concurrent requests got the same address: {dupes[:3]} (no locking?)")
    return passed(f"20 distinct addresses from {pool}")


@check(CHECKS, "I16", "Replies: exactly 200 + JSON, Err on non-200", "protocol §1.6, §5")
def replies(ctx: IpamContext) -> Outcome:
    return reply_format(ctx)


@check(CHECKS, "I17", "Bad bodies get an error; the plugin stays up", "protocol §1.6")
def garbage(ctx: IpamContext) -> Outcome:
    pool = {"PoolID": "str"}
    address = {"PoolID": "str", "Address": "str"}
    endpoints = {
        _P + "RequestPool": (
            True,
            {
                "AddressSpace": "str",
                "Pool": "str",
                "SubPool": "str",
                "V6": "bool",
                "Options": "map",
            },
        ),
        _P + "RequestAddress": (True, address | {"Options": "map"}),
        _P + "ReleaseAddress": (False, address),
        _P + "ReleasePool": (False, pool),
    }

    def accepted(endpoint: str, reply: Reply) -> bool:
        if ctx.error(reply) is not None:
            return False
        data = lowered(reply_json(reply))
        if endpoint.endswith("RequestPool"):
            if data.get("poolid"):
                ctx.pools.append(str(data["poolid"]))  # released again at cleanup
            return bool(data.get("poolid") or data.get("pool"))
        if endpoint.endswith("RequestAddress"):
            return bool(data.get("address"))
        return True

    outcome = reject_garbage(ctx, endpoints, accepted)
    held = ctx.state.get("any")
    if held is not None and outcome.result.value != "fail":
        after = ctx.request_address(held[0], "")
        if ctx.error(after) is not None:
            return failed(f"after the bad bodies, RequestAddress fails: {describe(after)}")
    return outcome
