"""What a dockplug-net network is made of: its ``-o`` options and the names of its links."""

from __future__ import annotations

import ipaddress
import re
import secrets

from dockplug.drivers.options import Option, OptionSet, parse_bool, parse_int

DEFAULT_MTU = 1500
RECORDS_FILE = "links.json"
PORTMAP = "com.docker.network.portmap"
INTERNAL = "com.docker.network.internal"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _cluster_name(text: str) -> str:
    if not _NAME.match(text):
        raise ValueError("use 1-63 letters, digits, '.', '_', '-' (the same name on every host)")
    return text


def _routes(text: str) -> list[tuple[str, str | None]]:
    """``CIDR=NEXTHOP`` or ``CIDR`` (directly connected), comma-separated; IPv4 or IPv6 (a
    next hop of the destination's family: dockerd adds the route in that family)."""
    out: list[tuple[str, str | None]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        dest, _, hop = item.partition("=")
        try:
            net = ipaddress.ip_network(dest, strict=False)
            gw = ipaddress.ip_address(hop) if hop else None
        except ValueError:
            raise ValueError(
                f"{item!r}: expected CIDR=NEXTHOP or CIDR, e.g. 10.9.0.0/16=10.1.0.254 or "
                "fd00:9::/64=fd00:1::fe"
            ) from None
        if gw is not None and gw.version != net.version:
            raise ValueError(f"{item!r}: the next hop {gw} is not of {net}'s family")
        out.append((str(net), str(gw) if gw else None))
    return out


NETWORK_OPTIONS = OptionSet(
    "dockplug-net",
    [
        Option(
            "dockplug.network",
            "cluster network NAME: the same name on every host is one network across hosts "
            "(VXLAN, needs --etcd); without it the network is this host's only",
            _cluster_name,
            example="web",
        ),
        Option(
            "mtu",
            f"MTU of the bridge and both veth ends [default: {DEFAULT_MTU}; on a cluster "
            "network the underlay's minus 50 for the VXLAN header]",
            parse_int(576, 65535),
            example="1400",
        ),
        Option("com.docker.network.driver.mtu", "the same as mtu", parse_int(576, 65535)),
        Option(
            "masquerade",
            "masquerade traffic leaving this host (outbound NAT, as docker0 does)",
            parse_bool,
            example="true",
            default=False,
        ),
        Option(
            "vni",
            "VXLAN network identifier of a new cluster network [default: one is claimed]",
            parse_int(1, 2**24 - 1),
            example="5001",
        ),
        Option(
            "routes",
            "static routes given to containers at Join: CIDR=NEXTHOP or CIDR, comma-separated",
            _routes,
            example="10.9.0.0/16=10.1.0.254",
        ),
    ],
    kind="network",
    flag="-o",
    thing="network",
)


def _names(network_id: str) -> tuple[str, str]:
    """Bridge and VXLAN device of a network (interface names: 15 bytes at most)."""
    return f"dpb{network_id[:12]}", f"dpx{network_id[:12]}"


def _veths(endpoint_id: str) -> tuple[str, str]:
    return f"dpv{endpoint_id[:12]}", f"dpc{endpoint_id[:12]}"


def _random_mac() -> str:
    """A locally administered unicast MAC, for endpoints dockerd gave none."""
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
