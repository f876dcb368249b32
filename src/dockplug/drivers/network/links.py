"""Kernel links through netlink (pyroute2): bridges, veth pairs, VXLAN devices, FDB and
neighbour entries. Every function is synchronous and opens its own ``IPRoute``: call them from
worker threads only (pyroute2's sync ``IPRoute`` refuses to run on the event-loop thread, and
its async API fails under uvloop; cluster-networking.md).

Every link this driver makes carries the alias :data:`OWNER` plus its network's ID, so a
restarted plugin adopts or removes exactly what it made and never touches anything else.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from dockplug.errors import PluginError

OWNER = "dockplug-net"
NTF_SELF = 0x02  # the VXLAN device's own table, not the bridge's (ndmsg NTF_SELF)
NUD_STATIC = ndmsg.states["noarp"] | ndmsg.states["permanent"]
NUD_PERMANENT = ndmsg.states["permanent"]
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 (libnetwork PR#491: 1450)
VXLAN_PORT = 4789  # IANA; what libnetwork's overlay uses too


class LinkError(PluginError):
    """A netlink call failed; the message names the link and the kernel's reason."""


@contextlib.contextmanager
def _ipr() -> Iterator[IPRoute]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _fail(what: str, exc: NetlinkError) -> LinkError:
    return LinkError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc} (errno {exc.code})")


def alias(network_id: str, role: str) -> str:
    """The ifalias of a link: whose it is (this driver), which network, what role."""
    return f"{OWNER}:{role}:{network_id}"


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    kind: str
    alias: str
    master: int | None
    mtu: int
    up: bool

    @property
    def ours(self) -> bool:
        return self.alias.startswith(OWNER + ":")

    @property
    def role(self) -> str:
        return self.alias.split(":")[1] if self.ours else ""

    @property
    def network_id(self) -> str:
        return self.alias.split(":", 2)[2] if self.ours else ""


def _link(msg: Any) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info is not None else ""
    return Link(
        name=msg.get("IFLA_IFNAME"),
        index=msg["index"],
        kind=kind or "",
        alias=msg.get("IFLA_IFALIAS") or "",
        master=msg.get("IFLA_MASTER"),
        mtu=msg.get("IFLA_MTU") or 0,
        up=bool(msg["flags"] & 1),
    )


def get(name: str) -> Link | None:
    """The link NAME in this network namespace, or None."""
    with _ipr() as ipr:
        try:
            return _link(ipr.link("get", ifname=name)[0])
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise _fail(f"link {name}", exc) from exc


def owned() -> list[Link]:
    """Every link this driver made (by its alias), in this network namespace."""
    with _ipr() as ipr:
        return [link for link in map(_link, ipr.link("dump")) if link.ours]


def _add_or_adopt(
    ipr: IPRoute, name: str, network_id: str, role: str, what: str, shown: str, **kw: Any
) -> None:
    """Make link NAME, or adopt the one a restarted plugin left (EEXIST) if its alias says it
    is this network's ROLE; a link of that name that is anything else is refused."""
    try:
        ipr.link("add", ifname=name, **kw)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise _fail(what, exc) from exc
        current = _link(ipr.link("get", ifname=name)[0])
        if current.alias != alias(network_id, role):
            raise LinkError(
                f"a link named {name} exists and is not this network's {shown} "
                f"(alias {current.alias!r}); fix: remove it (ip link del {name})"
            ) from None


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LinkError(f"link {name} does not exist")
    return int(found[0])


IFA_F_NODAD = 0x02  # an address the kernel uses at once, without duplicate detection


def _enable_ipv6(name: str) -> None:
    """IPv6 on the link NAME (in this process's network namespace), in case the host's
    default (``net.ipv6.conf.default.disable_ipv6``) turned it off for new links."""
    path = Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
    if not path.exists():
        raise LinkError(
            f"{name}: IPv6 is not available on this host (no {path}; booted with "
            "ipv6.disable=1?); fix: create the network without --ipv6"
        )
    if path.read_text().strip() != "0":
        path.write_text("0\n")


def ensure_bridge(name: str, network_id: str, gateways: Iterable[str | None], mtu: int) -> None:
    """The network's bridge, up, with the gateway addresses (CIDR: the IPv4 one and the IPv6
    one) on it; adopts an existing one of ours (a restart), refuses a foreign link of that
    name. The IPv6 gateway skips duplicate address detection, as libnetwork's bridge driver
    does: a tentative gateway would leave containers without a route for a second or two."""
    with _ipr() as ipr:
        _add_or_adopt(ipr, name, network_id, "bridge", f"bridge {name}", "bridge", kind="bridge")
        index = _index(ipr, name)
        ipr.link("set", index=index, ifalias=alias(network_id, "bridge"), mtu=mtu)
        for gateway in filter(None, gateways):
            iface = ipaddress.ip_interface(gateway)
            extra: dict[str, Any] = {}
            if iface.version == 6:
                _enable_ipv6(name)
                extra["flags"] = IFA_F_NODAD
            try:
                ipr.addr(
                    "add", index=index, address=str(iface.ip),
                    prefixlen=iface.network.prefixlen, **extra,
                )  # fmt: skip
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise _fail(f"address {gateway} on {name}", exc) from exc
        ipr.link("set", index=index, state="up")


def ensure_vxlan(
    name: str, network_id: str, vni: int, local: str, dev: int | None, mtu: int, bridge: str
) -> None:
    """The network's VXLAN device: VNI, this host's VTEP address, learning off and ARP proxy on
    (peers are programmed as static FDB and neighbour entries, so nothing floods), enslaved to
    the bridge."""
    with _ipr() as ipr:
        args: dict[str, Any] = {
            "vxlan_id": vni,
            "vxlan_local": local,
            "vxlan_port": VXLAN_PORT,
            "vxlan_learning": 0,
            "vxlan_proxy": 1,
        }
        if dev is not None:
            args["vxlan_link"] = dev
        _add_or_adopt(
            ipr, name, network_id, "vxlan", f"vxlan {name} (VNI {vni})", "VXLAN device",
            kind="vxlan", **args,
        )  # fmt: skip
        index = _index(ipr, name)
        ipr.link("set", index=index, ifalias=alias(network_id, "vxlan"), mtu=mtu)
        ipr.link("set", index=index, master=_index(ipr, bridge), state="up")


def add_veth(host: str, peer: str, network_id: str, bridge: str, mtu: int, mac: str | None) -> None:
    """A veth pair for one endpoint: HOST on the bridge, PEER (moved into the container by
    dockerd) with the endpoint's MAC. The MTU is set on both ends: the peer does not inherit
    it, and a larger MTU on one end drops large packets silently."""
    with _ipr() as ipr:
        peer_args: dict[str, Any] = {"ifname": peer, "mtu": mtu}
        if mac:
            peer_args["address"] = mac
        try:
            ipr.link("add", ifname=host, kind="veth", mtu=mtu, peer=peer_args)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _fail(f"veth {host}", exc) from exc
            current = _link(ipr.link("get", ifname=host)[0])
            if current.alias != alias(network_id, "veth"):
                raise LinkError(f"a link named {host} exists and is not ours") from None
        try:
            index = _index(ipr, host)
            ipr.link("set", index=index, ifalias=alias(network_id, "veth"))
            with contextlib.suppress(NetlinkError):  # gone into a sandbox already: fine
                ipr.link("set", index=_index(ipr, peer), ifalias=alias(network_id, "peer"))
            ipr.link("set", index=index, master=_index(ipr, bridge), state="up")
        except (NetlinkError, LinkError) as exc:
            with contextlib.suppress(NetlinkError, LinkError):
                ipr.link("del", index=_index(ipr, host))
            if isinstance(exc, NetlinkError):
                raise _fail(f"veth {host} on {bridge}", exc) from exc
            raise


def delete(name: str) -> bool:
    """Removes link NAME (a veth takes its peer with it); False when it was not there."""
    with _ipr() as ipr:
        try:
            ipr.link("del", index=_index(ipr, name))
        except LinkError:
            return False
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise _fail(f"removing {name}", exc) from exc
    return True


def ports(bridge: str) -> list[Link]:
    """The links enslaved to BRIDGE."""
    with _ipr() as ipr:
        index = _index(ipr, bridge)
        return [link for link in map(_link, ipr.link("dump")) if link.master == index]


# -- FDB and neighbour entries on a VXLAN device ----------------------------------------------


def fdb(vxlan: str) -> set[tuple[str, str]]:
    """The VXLAN device's own (MAC, remote VTEP) entries. A dump mixes in the bridge's table
    for that port, which have no ``NDA_DST``: those are left out."""
    with _ipr() as ipr:
        index = _index(ipr, vxlan)
        out = set()
        for msg in ipr.fdb("dump", ifindex=index):
            dst = msg.get("NDA_DST")
            if msg["ifindex"] == index and dst:
                out.add((str(msg.get("NDA_LLADDR")).lower(), str(dst)))
        return out


def fdb_add(vxlan: str, mac: str, dst: str) -> None:
    """A static entry: frames for MAC go to the VTEP DST. ``replace`` gets none of ``add``'s
    defaults, so NTF_SELF and NOARP|PERMANENT are given (without them the entry lands in the
    bridge's table as local and black-holes traffic)."""
    with _ipr() as ipr:
        try:
            ipr.fdb(
                "replace", ifindex=_index(ipr, vxlan), lladdr=mac, dst=dst,
                flags=NTF_SELF, state=NUD_STATIC,
            )  # fmt: skip
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _fail(f"fdb {mac} dst {dst} on {vxlan}", exc) from exc


def fdb_del(vxlan: str, mac: str, dst: str) -> None:
    with _ipr() as ipr:
        try:
            ipr.fdb(
                "del", ifindex=_index(ipr, vxlan), lladdr=mac, dst=dst,
                flags=NTF_SELF, state=NUD_STATIC,
            )  # fmt: skip
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ENODEV):
                raise _fail(f"fdb {mac} dst {dst} on {vxlan}", exc) from exc


def neighbours(vxlan: str) -> set[tuple[str, str]]:
    """The (IP, MAC) entries the VXLAN device answers ARP and IPv6 neighbour solicitations
    from (its proxy), of both families."""
    with _ipr() as ipr:
        index = _index(ipr, vxlan)
        out = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.neigh("dump", ifindex=index, family=family):
                ip, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
                if msg["ifindex"] == index and ip and mac and msg["state"] & NUD_PERMANENT:
                    out.add((str(ipaddress.ip_address(ip)), str(mac).lower()))
        return out


def _family(ip: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


def neigh_add(vxlan: str, ip: str, mac: str) -> None:
    with _ipr() as ipr:
        try:
            ipr.neigh(
                "replace", ifindex=_index(ipr, vxlan), dst=ip, lladdr=mac,
                state=NUD_PERMANENT, family=_family(ip),
            )  # fmt: skip
        except NetlinkError as exc:
            raise _fail(f"neighbour {ip} {mac} on {vxlan}", exc) from exc


def neigh_del(vxlan: str, ip: str, mac: str) -> None:
    with _ipr() as ipr:
        try:
            ipr.neigh("del", ifindex=_index(ipr, vxlan), dst=ip, lladdr=mac, family=_family(ip))
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ENODEV):
                raise _fail(f"neighbour {ip} on {vxlan}", exc) from exc


# -- the underlay ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Underlay:
    """Where this host's VXLAN traffic leaves: its VTEP address, that interface and its MTU."""

    address: str
    index: int
    name: str
    mtu: int


def underlay(vtep: str | None, toward: str | None) -> Underlay:
    """The VTEP: VTEP as an address or an interface name (its first IPv4 address), or else the
    source of the route TOWARD (a peer, e.g. the etcd host) picks it."""
    with _ipr() as ipr:
        if vtep:
            try:
                address = str(ipaddress.IPv4Address(vtep))
            except ValueError:
                index = _index(ipr, vtep)
                addrs = ipr.get_addr(index=index, family=socket.AF_INET)
                if not addrs:
                    raise LinkError(f"--vtep {vtep}: the interface has no IPv4 address") from None
                address = str(addrs[0].get("IFA_ADDRESS"))
            else:
                found = [a for a in ipr.get_addr(family=socket.AF_INET)
                         if a.get("IFA_ADDRESS") == address]  # fmt: skip
                if not found:
                    raise LinkError(f"--vtep {vtep}: no interface here has that address")
                index = found[0]["index"]
        else:
            if not toward:
                raise LinkError(
                    "no VTEP address: give --vtep ADDRESS|INTERFACE (this host's underlay)"
                )
            try:
                route = ipr.route("get", dst=toward)[0]
            except NetlinkError as exc:
                what = f"route to {toward} (for the VTEP address; or give --vtep)"
                raise _fail(what, exc) from exc
            address = str(route.get("RTA_PREFSRC"))
            index = int(route.get("RTA_OIF"))
        link = _link(ipr.link("get", index=index)[0])
        return Underlay(address=address, index=index, name=link.name, mtu=link.mtu)
