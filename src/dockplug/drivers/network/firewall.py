"""Forward, isolation and masquerade rules that work beside dockerd's own iptables.

With dockerd's default ``--iptables=true`` the FORWARD policy is DROP and ``br_netfilter`` is on,
so even traffic between two ports of one of our bridges is filtered: without a rule, containers
on it cannot reach each other (test-environment.md, measured). The rules follow moby's bridge
driver (``drivers/bridge/setup_ip_tables.go``: ``-i BR -o BR ACCEPT``, established back in,
``-i BR ! -o BR ACCEPT`` unless internal, other networks isolated) but live in chains of their
own, so removing a network is deleting its chains, and a restarted plugin can find every rule it
made by name and comment:

- ``filter FORWARD -j DOCKPLUG-NET`` (appended: after ``DOCKER-USER`` and dockerd's rules, which
  only match dockerd's own bridges);
- ``DOCKPLUG-NET``: ``-o BR -j DPN-<id>-I`` for every network first, then ``-i BR -j DPN-<id>-O``:
  a packet to one of our bridges is decided by that network's inbound chain, so a new
  connection from another dockplug network is dropped there whatever the order of networks;
- ``DPN-<id>-I``: from the same bridge ACCEPT (containers, and the VXLAN port), established
  ACCEPT unless internal, else DROP; ``DPN-<id>-O``: ACCEPT, or DROP for ``--internal``;
- ``nat POSTROUTING -j DOCKPLUG-NET-NAT``: ``-s SUBNET ! -o BR -j MASQUERADE`` when asked.

A network with an IPv6 subnet gets the same chains from ``ip6tables`` (``br_netfilter`` passes
bridged IPv6 through ip6tables' FORWARD too, ``bridge-nf-call-ip6tables``; dockerd 28 sets its
policy to DROP with its default ``--ip6tables=true``, 20.10 leaves ip6tables alone unless
``--ip6tables`` is given with ``--experimental``). ``ip6tables`` is needed only for such
networks; removal and the restart sweep look at it whenever it is installed.

The ``iptables`` command is used (with ``-w``, dockerd's lock) rather than a Python binding:
python-iptables drives libiptc, the legacy backend only, while Debian's default ``iptables`` is
the nf_tables one dockerd also uses; the nftables bindings are not on PyPI, and rules in a
native nft table would not be ordered against dockerd's FORWARD chain at all.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import threading

from dockplug.errors import PluginError

MAIN = "DOCKPLUG-NET"
NAT = "DOCKPLUG-NET-NAT"
_lock = threading.Lock()


class FirewallError(PluginError):
    pass


def chains(network_id: str) -> tuple[str, str]:
    """The network's inbound and outbound chains (iptables chain names: 28 bytes at most)."""
    return f"DPN-{network_id[:12]}-I", f"DPN-{network_id[:12]}-O"


def comment(network_id: str) -> str:
    return f"dockplug-net:{network_id[:12]}"


IPV4, IPV6 = "iptables", "ip6tables"


def _binary(tool: str = IPV4) -> str:
    found = shutil.which(tool)
    if found is None:
        what = "IPv6 networks" if tool == IPV6 else "its forward rules"
        raise FirewallError(
            f"the {tool} command is missing (apt-get install iptables): dockplug-net needs it "
            f"for {what} (FORWARD policy DROP under dockerd)"
        )
    return found


def _tools() -> list[str]:
    """The families whose rules may exist here: iptables, and ip6tables when installed."""
    return [IPV4] + ([IPV6] if shutil.which(IPV6) else [])


def _run(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [_binary(tool), "-w", "10", *args], capture_output=True, text=True, timeout=30
    )
    if check and done.returncode != 0:
        raise FirewallError(f"{tool} {' '.join(args)}: {done.stderr.strip()}")
    return done


def _exists(tool: str, table: str, chain: str, *rule: str) -> bool:
    return _run(tool, "-t", table, "-C", chain, *rule, check=False).returncode == 0


def _chain_exists(tool: str, table: str, chain: str) -> bool:
    return _run(tool, "-t", table, "-n", "-L", chain, check=False).returncode == 0


def _ensure_chain(tool: str, table: str, chain: str) -> None:
    if not _chain_exists(tool, table, chain):
        _run(tool, "-t", table, "-N", chain)


def _ensure_jump(tool: str, table: str, parent: str, chain: str) -> None:
    if not _exists(tool, table, parent, "-j", chain):
        _run(tool, "-t", table, "-A", parent, "-j", chain)


def _drop_chain(tool: str, table: str, chain: str) -> None:
    if _chain_exists(tool, table, chain):
        _run(tool, "-t", table, "-F", chain)
        _run(tool, "-t", table, "-X", chain)


def _rules(tool: str, table: str, chain: str) -> list[list[str]]:
    """The rules of CHAIN as ``-A CHAIN ...`` argument lists (``iptables -S``)."""
    done = _run(tool, "-t", table, "-S", chain, check=False)
    if done.returncode != 0:
        return []
    return [shlex.split(line) for line in done.stdout.splitlines() if line.startswith("-A ")]


def install(
    network_id: str,
    bridge: str,
    subnet: str | None,
    internal: bool,
    masquerade: bool,
    subnet6: str | None = None,
) -> None:
    """The network's rules (idempotent: a restart or a second call changes nothing): from
    iptables always, from ip6tables too when the network has an IPv6 subnet."""
    with _lock:
        _install(IPV4, network_id, bridge, subnet, internal, masquerade)
        if subnet6:
            _install(IPV6, network_id, bridge, subnet6, internal, masquerade)


def _install(
    tool: str, network_id: str, bridge: str, subnet: str | None, internal: bool, masquerade: bool
) -> None:
    inbound, outbound = chains(network_id)
    tag = ["-m", "comment", "--comment", comment(network_id)]
    _ensure_chain(tool, "filter", MAIN)
    _ensure_jump(tool, "filter", "FORWARD", MAIN)
    established = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]
    wanted = {
        inbound: [["-i", bridge, "-j", "ACCEPT"], *([] if internal else [established])],
        outbound: [["-j", "DROP" if internal else "ACCEPT"]],
    }
    wanted[inbound].append(["-j", "DROP"])
    for chain, rules in wanted.items():
        _ensure_chain(tool, "filter", chain)
        # a restarted plugin finds them in place: rewriting them would open a window in
        # which the chain is empty and the FORWARD policy drops running containers' packets
        if [r[2:] for r in _rules(tool, "filter", chain)] == rules:
            continue
        _run(tool, "-t", "filter", "-F", chain)
        for rule in rules:
            _run(tool, "-A", chain, *rule)
    if not _exists(tool, "filter", MAIN, "-o", bridge, *tag, "-j", inbound):
        _run(tool, "-I", MAIN, "1", "-o", bridge, *tag, "-j", inbound)
    if not _exists(tool, "filter", MAIN, "-i", bridge, *tag, "-j", outbound):
        _run(tool, "-A", MAIN, "-i", bridge, *tag, "-j", outbound)
    nat_rule = ["-s", subnet or "", "!", "-o", bridge, *tag, "-j", "MASQUERADE"]
    if masquerade and subnet and not internal:
        _ensure_chain(tool, "nat", NAT)
        _ensure_jump(tool, "nat", "POSTROUTING", NAT)
        if not _exists(tool, "nat", NAT, *nat_rule):
            _run(tool, "-t", "nat", "-A", NAT, *nat_rule)


def remove(network_id: str) -> None:
    """Every rule of the network, in both families; the shared chains too once no network is
    left."""
    with _lock:
        for tool in _tools():
            if tool == IPV6 and not _has_ours(tool, network_id):
                continue  # no IPv6 rules of ours here: spare the calls
            _remove_tagged(tool, "filter", MAIN, comment(network_id))
            _remove_tagged(tool, "nat", NAT, comment(network_id))
            for chain in chains(network_id):
                _drop_chain(tool, "filter", chain)
            _prune(tool)


def _has_ours(tool: str, network_id: str) -> bool:
    """Whether TOOL's tables hold a shared chain of ours or one of the network's."""
    names = [("filter", MAIN), ("nat", NAT), *(("filter", c) for c in chains(network_id))]
    return any(_chain_exists(tool, table, chain) for table, chain in names)


def _remove_tagged(tool: str, table: str, chain: str, tag: str) -> None:
    for rule in _rules(tool, table, chain):
        if tag in rule:
            _run(tool, "-t", table, "-D", *rule[1:], check=False)


def _prune(tool: str) -> None:
    """The shared chains and their jumps, when they hold nothing any more."""
    for table, parent, chain in (("filter", "FORWARD", MAIN), ("nat", "POSTROUTING", NAT)):
        if _chain_exists(tool, table, chain) and not _rules(tool, table, chain):
            while _exists(tool, table, parent, "-j", chain):
                _run(tool, "-t", table, "-D", parent, "-j", chain)
            _run(tool, "-t", table, "-X", chain)


def networks() -> set[str]:
    """The (12-character) network IDs that have rules here, in either family: for a restarted
    plugin to remove those of networks it no longer has."""
    found = set()
    for tool in _tools():
        for table, chain in (("filter", MAIN), ("nat", NAT)):
            for rule in _rules(tool, table, chain):
                for word in rule:
                    if word.startswith("dockplug-net:"):
                        found.add(word.split(":", 1)[1])
    return found


def all_rules() -> list[str]:
    """Every rule of ours (for tests and ``status``): ``[ip6tables ]TABLE CHAIN RULE`` lines."""
    out = []
    for tool in _tools():
        lead = "" if tool == IPV4 else f"{tool} "
        for table, chain in (("filter", MAIN), ("nat", NAT)):
            out += [f"{lead}{table} {' '.join(r)}" for r in _rules(tool, table, chain)]
        done = _run(tool, "-t", "filter", "-S", check=False)
        out += [
            lead + line
            for line in done.stdout.splitlines()
            if "DPN-" in line and line.startswith("-N")
        ]
    return out
