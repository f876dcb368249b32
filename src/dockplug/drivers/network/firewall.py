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


def _binary() -> str:
    found = shutil.which("iptables")
    if found is None:
        raise FirewallError(
            "the iptables command is missing (apt-get install iptables): dockplug-net needs it "
            "for its forward rules (FORWARD policy DROP under dockerd)"
        )
    return found


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [_binary(), "-w", "10", *args], capture_output=True, text=True, timeout=30
    )
    if check and done.returncode != 0:
        raise FirewallError(f"iptables {' '.join(args)}: {done.stderr.strip()}")
    return done


def _exists(table: str, chain: str, *rule: str) -> bool:
    return _run("-t", table, "-C", chain, *rule, check=False).returncode == 0


def _ensure_chain(table: str, chain: str) -> None:
    if _run("-t", table, "-n", "-L", chain, check=False).returncode != 0:
        _run("-t", table, "-N", chain)


def _chain_exists(table: str, chain: str) -> bool:
    return _run("-t", table, "-n", "-L", chain, check=False).returncode == 0


def _ensure_jump(table: str, parent: str, chain: str) -> None:
    if not _exists(table, parent, "-j", chain):
        _run("-t", table, "-A", parent, "-j", chain)


def _drop_chain(table: str, chain: str) -> None:
    if _chain_exists(table, chain):
        _run("-t", table, "-F", chain)
        _run("-t", table, "-X", chain)


def _rules(table: str, chain: str) -> list[list[str]]:
    """The rules of CHAIN as ``-A CHAIN ...`` argument lists (``iptables -S``)."""
    done = _run("-t", table, "-S", chain, check=False)
    if done.returncode != 0:
        return []
    return [shlex.split(line) for line in done.stdout.splitlines() if line.startswith("-A ")]


def install(
    network_id: str, bridge: str, subnet: str | None, internal: bool, masquerade: bool
) -> None:
    """The network's rules (idempotent: a restart or a second call changes nothing)."""
    inbound, outbound = chains(network_id)
    tag = ["-m", "comment", "--comment", comment(network_id)]
    with _lock:
        _ensure_chain("filter", MAIN)
        _ensure_jump("filter", "FORWARD", MAIN)
        established = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]
        wanted = {
            inbound: [["-i", bridge, "-j", "ACCEPT"], *([] if internal else [established])],
            outbound: [["-j", "DROP" if internal else "ACCEPT"]],
        }
        wanted[inbound].append(["-j", "DROP"])
        for chain, rules in wanted.items():
            _ensure_chain("filter", chain)
            # a restarted plugin finds them in place: rewriting them would open a window in
            # which the chain is empty and the FORWARD policy drops running containers' packets
            if [r[2:] for r in _rules("filter", chain)] == rules:
                continue
            _run("-t", "filter", "-F", chain)
            for rule in rules:
                _run("-A", chain, *rule)
        if not _exists("filter", MAIN, "-o", bridge, *tag, "-j", inbound):
            _run("-I", MAIN, "1", "-o", bridge, *tag, "-j", inbound)
        if not _exists("filter", MAIN, "-i", bridge, *tag, "-j", outbound):
            _run("-A", MAIN, "-i", bridge, *tag, "-j", outbound)
        nat_rule = ["-s", subnet or "", "!", "-o", bridge, *tag, "-j", "MASQUERADE"]
        if masquerade and subnet and not internal:
            _ensure_chain("nat", NAT)
            _ensure_jump("nat", "POSTROUTING", NAT)
            if not _exists("nat", NAT, *nat_rule):
                _run("-t", "nat", "-A", NAT, *nat_rule)


def remove(network_id: str) -> None:
    """Every rule of the network; the shared chains too once no network is left."""
    with _lock:
        _remove_tagged("filter", MAIN, comment(network_id))
        _remove_tagged("nat", NAT, comment(network_id))
        for chain in chains(network_id):
            _drop_chain("filter", chain)
        _prune()


def _remove_tagged(table: str, chain: str, tag: str) -> None:
    for rule in _rules(table, chain):
        if tag in rule:
            _run("-t", table, "-D", *rule[1:], check=False)


def _prune() -> None:
    """The shared chains and their jumps, when they hold nothing any more."""
    for table, parent, chain in (("filter", "FORWARD", MAIN), ("nat", "POSTROUTING", NAT)):
        if _chain_exists(table, chain) and not _rules(table, chain):
            while _exists(table, parent, "-j", chain):
                _run("-t", table, "-D", parent, "-j", chain)
            _run("-t", table, "-X", chain)


def networks() -> set[str]:
    """The (12-character) network IDs that have rules here: for a restarted plugin to remove
    those of networks it no longer has."""
    found = set()
    for table, chain in (("filter", MAIN), ("nat", NAT)):
        for rule in _rules(table, chain):
            for word in rule:
                if word.startswith("dockplug-net:"):
                    found.add(word.split(":", 1)[1])
    return found


def all_rules() -> list[str]:
    """Every rule of ours (for tests and ``status``): ``TABLE CHAIN RULE`` lines."""
    out = []
    for table, chain in (("filter", MAIN), ("nat", NAT)):
        out += [f"{table} {' '.join(r)}" for r in _rules(table, chain)]
    done = _run("-t", "filter", "-S", check=False)
    out += [line for line in done.stdout.splitlines() if "DPN-" in line and line.startswith("-N")]
    return out
