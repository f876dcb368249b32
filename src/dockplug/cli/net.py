"""``dockplug net ...``: the cluster IPAM's state, and freeing what is stale.

Both commands ask the running plugin first (its maintenance endpoints, not announced to
dockerd); with no plugin running they read the store themselves (``--state-dir`` or ``--etcd``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dockplug.drivers.registry import setting_default
from dockplug.errors import ConfigError


def _store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--plugin",
            default="dockplug-net",
            show_default=True,
            help="Running plugin to ask (name, socket path or URL).",
        ),
        click.option(
            "--state-dir",
            type=click.Path(path_type=Path),
            default=setting_default("net", "state_dir"),
            show_default=True,
            help="SQLite store, read directly when the plugin is not running.",
        ),
        click.option("--etcd", metavar="URLS", help="Read this etcd directly instead."),
        click.option("--etcd-ca", type=click.Path(path_type=Path)),
        click.option("--etcd-cert", type=click.Path(path_type=Path)),
        click.option("--etcd-key", type=click.Path(path_type=Path)),
        click.option("--host-id", help="This host's name in the store [default: hostname]."),
        click.option(
            "--key-prefix", default=setting_default("net", "key_prefix"), show_default=True
        ),
        click.option(
            "--reclaim-after",
            default=setting_default("net", "reclaim_after"),
            show_default=True,
            metavar="DURATION",
        ),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _ask_plugin(plugin: str, endpoint: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The plugin's answer, or None when no plugin answers (then the store is read directly)."""
    from dockplug.client import PluginClient

    if plugin == "none":
        return None
    try:
        with PluginClient(plugin, timeout=60) as client:
            reply = client.call(endpoint, body)
    except (ConfigError, OSError):
        return None
    if reply.status == 404:
        return None
    if reply.error:
        raise ConfigError(f"{endpoint}: {reply.error}")
    data = reply.json if isinstance(reply.json, dict) else {}
    result = data.get("Result", {})
    return result if isinstance(result, dict) else {}


def _direct(
    params: dict[str, Any], call: str, body: Any, with_network: bool = False
) -> dict[str, Any]:
    """CALL answered from the store itself; WITH_NETWORK adds the cluster networks' records
    (which hosts use them, whose VTEP is on a live lease, the endpoints) under ``network``,
    as the plugin reports them. This host's bridges are the running plugin's to report."""
    from dockplug.drivers.ipam.driver import NetDriver
    from dockplug.drivers.network.cluster import Cluster

    async def run() -> dict[str, Any]:
        driver = NetDriver(
            state_dir=params["state_dir"],
            etcd=params["etcd"],
            etcd_ca=params["etcd_ca"],
            etcd_cert=params["etcd_cert"],
            etcd_key=params["etcd_key"],
            host_id=params["host_id"],
            reclaim_after=params["reclaim_after"],
            key_prefix=params["key_prefix"],
            docker_host=params.get("docker_host"),
            log=lambda line: click.echo(line, err=True),
        )
        try:
            result: dict[str, Any] = await getattr(driver, call)(body)
            if with_network and result.get("store", {}).get("ok", True):
                cluster = Cluster(
                    driver.store, driver.host, params["key_prefix"], 1, lambda _: None, driver.log
                )
                await cluster.read()
                result["network"] = {"host": driver.host, "cluster": cluster.summary()}
            return result
        finally:
            await driver.store.close()

    return asyncio.run(run())


@click.group(name="net")
def net() -> None:
    """Inspect and maintain the dockplug-net cluster IPAM."""


@net.command()
@_store_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(as_json: bool, **params: Any) -> None:
    """Pools, addresses per host, hosts and their heartbeats, stale records, store health;
    the networks of this host, and the cluster networks with their hosts (VTEP lease alive or
    missing) and endpoints per host."""
    from dockplug.protocol.base import Empty

    report = None if params["etcd"] else _ask_plugin(params["plugin"], "DockplugNet.Status", None)
    if report is None:
        report = _direct(params, "admin_status", Empty(), with_network=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    _print_status(report)


def _print_status(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    store = report["store"]
    state = "[green]ok[/green]" if store["ok"] else f"[red]unavailable[/red]: {store['error']}"
    console.print(f"store: {store['name']}: {state} ({store['latency_ms']} ms)")
    me = report.get("this_host") or {}
    if me:
        console.print(
            f"this host: {me['host']}"
            + (" (collector)" if me.get("collector") else "")
            + f", {me['queued_releases']} queued release(s)"
        )
    pools = Table("SPACE", "POOL", "RANGE", "GATEWAY", "SHARING", "HOSTS", "ALLOCATED", box=None)
    for p in report["pools"]:
        allocated = ", ".join(f"{h}: {n}" for h, n in sorted(p["allocated"].items())) or "0"
        sharing = (
            "orphan"
            if p.get("orphan")
            else (f"private to {p['private']}" if p.get("private") else "shared")
        )
        pools.add_row(
            p["space"],
            p["pool"],
            p.get("range", "-"),
            p.get("gateway", "-"),
            sharing,
            ", ".join(f"{h}" + (f"x{n}" if n > 1 else "") for h, n in sorted(p["users"].items()))
            or "-",
            allocated,
        )
    if report["pools"]:
        console.print(pools)
    else:
        console.print("no pools")
    hosts = Table("HOST", "HEARTBEAT", "UP", box=None)
    for h in report["hosts"]:
        up = f"{h['up_s']} s" if h.get("up_s") is not None else "-"
        hosts.add_row(h["host"], "alive" if h["alive"] else "[red]missing[/red]", up)
    if report["hosts"]:
        console.print(hosts)
    for s in report.get("stale", []):
        console.print(
            f"[yellow]stale: {s['kind']} {s['what']} in {s['pool']} (host {s['host']}): "
            f"{s['reason']}; dockplug net gc frees it[/yellow]"
        )
    if report.get("stale_error"):
        console.print(f"[yellow]{report['stale_error']}[/yellow]")
    for g in report["gone"]:
        console.print(
            f"[yellow]stale: host {g['host']} has no heartbeat for {g['missing_s']} s; its "
            f"records are reclaimed in {g['reclaim_in_s']} s[/yellow]"
        )
    if report.get("network"):
        _print_network(console, report["network"])


def _both(v4: str | None, v6: str | None, bare: bool = False) -> str:
    """A dual-stack cell: the IPv4 value, then the IPv6 one (an IPv6-only network has only
    that); BARE drops the prefix length of gateway CIDRs."""
    values = [v.split("/")[0] if bare else v for v in (v4, v6) if v]
    return " ".join(values) or "-"


def _print_network(console: Any, net: dict[str, Any]) -> None:
    """The network driver's section: this host's networks (when the plugin answered), then
    each cluster network, the hosts using it and the endpoints each host published."""
    from rich.table import Table

    if "networks" in net:
        local = Table("NETWORK", "BRIDGE", "SUBNET", "CLUSTER", "VNI", "MTU", "ENDPOINTS",
                      "FLAGS", box=None, title=f"networks on this host ({net['host']})",
                      title_justify="left")  # fmt: skip
        for n in net["networks"]:
            flags = ", ".join(f for f in ("internal", "masquerade") if n.get(f)) or "-"
            local.add_row(n["network_id"], n["bridge"], _both(n.get("subnet"), n.get("subnet6")),
                          n.get("cluster") or "(this host)", str(n.get("vni") or "-"),
                          str(n["mtu"]), str(n["endpoints"]), flags)  # fmt: skip
        console.print(local if net["networks"] else "no dockplug-net networks on this host")
        if net.get("queued"):
            queued = net["queued"]
            console.print(f"[yellow]{queued} cluster withdrawal(s) queued for the store[/yellow]")
    if "cluster" not in net:
        return
    if net.get("cluster_synced") is False:
        console.print("[yellow]cluster view: not read from the store yet[/yellow]")
    if net.get("cluster_watch_error"):
        console.print(f"[yellow]cluster watch: {net['cluster_watch_error']}[/yellow]")
    clusters: dict[str, dict[str, Any]] = net["cluster"]
    if not clusters:
        console.print("no cluster networks")
        return
    specs = Table("CLUSTER NETWORK", "SUBNET", "GATEWAY", "VNI", "MTU", "CREATED BY", box=None)
    hosts = Table("CLUSTER NETWORK", "HOST", "VTEP", "LIVENESS", "MEMBER", "ENDPOINTS", box=None)
    endpoints = Table("CLUSTER NETWORK", "HOST", "ADDRESS", "MAC", box=None)
    for name, info in sorted(clusters.items()):
        spec = info.get("spec") or {}
        subnets = _both(spec.get("subnet"), spec.get("subnet6")) if spec else "[red]no spec[/red]"
        specs.add_row(name, subnets, _both(spec.get("gateway"), spec.get("gateway6"), bare=True),
                      str(spec.get("vni", "-")), str(spec.get("mtu", "-")),
                      spec.get("created_by", "-"))  # fmt: skip
        eps: dict[str, list[str]] = info.get("endpoints", {})
        for host, h in sorted(info.get("hosts", {}).items()):
            alive = "alive" if h.get("alive") else "[red]missing[/red] (no VTEP lease)"
            member = "yes" if h.get("member") else "no"
            hosts.add_row(
                name, host, h.get("vtep", "-"), alive, member, str(len(eps.get(host, [])))
            )
        for host, ads in sorted(eps.items()):
            for ad in sorted(ads):
                ip, _, mac = ad.partition(" ")
                endpoints.add_row(name, host, ip, mac or "-")
    console.print(specs)
    console.print(hosts)
    if endpoints.row_count:
        console.print(endpoints)


@net.command()
@_store_options
@click.option("--docker-host", metavar="URL", help="Engine API [default: DOCKER_HOST].")
@click.option("--dry-run", is_flag=True, help="Only show what is stale.")
def gc(dry_run: bool, **params: Any) -> None:
    """Free addresses no container of this host holds (older than --reclaim-after) and the
    records of hosts whose heartbeat stopped longer ago than that."""
    from dockplug.drivers.ipam.driver import GcRequest

    params["docker_host"] = params["docker_host"] or os.environ.get("DOCKER_HOST")
    result = None
    if not params["etcd"]:
        result = _ask_plugin(params["plugin"], "DockplugNet.Gc", {"DryRun": dry_run})
    if result is None:
        result = _direct(params, "admin_gc", GcRequest(dry_run=dry_run))
    verb = "stale" if dry_run else "freed"
    for s in result.get("stale", []):
        click.echo(
            f"{verb}: {s['kind']} {s['what']} in {s['pool']} (host {s['host']}): {s['reason']}"
        )
    if not result.get("stale"):
        click.echo("nothing stale")
    for error in result.get("errors", []):
        click.echo(f"dockplug: {error}", err=True)
