"""``dockplug check``: the conformance harness from the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dockplug.errors import ConfigError

_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}
# spelled out rather than read from the harness's KINDS, so --help does not import it
KIND_NAMES = ["volume", "network", "ipam", "authz", "log"]


def _kind_from(activate: Any, detect: Callable[[list[str]], str]) -> str:
    """The kind Activate's ``Implements`` names; a ConfigError saying to use --type otherwise."""
    try:
        data = activate.json
    except ValueError:
        data = None
    implements = data.get("Implements") if isinstance(data, dict) else None
    if activate.status != 200 or not isinstance(implements, list):
        raise ConfigError(
            f"Plugin.Activate answered HTTP {activate.status} {activate.raw[:80]!r}, with no "
            "Implements list to pick the protocol from: give it with --type"
        )
    try:
        return detect([str(i) for i in implements])
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _managed(name: str, legacy: ConfigError) -> tuple[Any, Any]:
    """An enabled managed plugin's socket and host paths, for a name no legacy plugin has."""
    from dockplug.packaging import engine

    try:
        found = engine.managed_target(name)
    except engine.EngineError as exc:
        raise ConfigError(f"{legacy}; nor as a managed plugin: {exc}") from None
    return found.address, found.host_paths


def _parse_opts(pairs: tuple[str, ...]) -> dict[str, str]:
    opts: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--opt {pair!r}: use KEY=VALUE")
        opts[key] = value
    return opts


@click.command()
@click.argument("target")
@click.option(
    "--type",
    "kind",
    type=click.Choice(KIND_NAMES),
    default=None,
    help="Which plugin protocol to check (default: the one Plugin.Activate announces).",
)
@click.option(
    "-o",
    "--opt",
    "opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option for the run (repeatable): volume: the test volume's Create options, like "
    "docker volume create -o; network: driver options, and subnet=CIDR; ipam: subnet=CIDR, "
    "subnet_small=CIDR; log: fifo_dir=DIR.",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the results to this file: a self-contained HTML page if it ends in "
    ".html, JSON otherwise.",
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for a reply.")
@click.option("--only", multiple=True, metavar="ID", help="Run only these check ids (repeatable).")
@click.option(
    "--engine",
    "engine_version",
    metavar="VERSION",
    help="The dockerd the plugin serves (e.g. 28 or 20.10), whose recordings the replays "
    "send [default: the one DOCKER_HOST answers with].",
)
def check(
    target: str,
    kind: str | None,
    opts: tuple[str, ...],
    report: Path | None,
    timeout: float,
    only: tuple[str, ...],
    engine_version: str | None,
) -> None:
    """Play dockerd against a plugin and check every reply against the protocol.

    \b
    TARGET  a plugin name (found like dockerd finds it), a socket path,
            or a URL: unix:///path, tcp://host:port, https://host:port;
            or an enabled managed plugin (docker plugin ls), via DOCKER_HOST

    The run creates what dockerd would (volumes named dpcheck-*, networks, endpoints, pools,
    addresses, log FIFOs) and removes it again. Exit status: 0 if no check failed (warnings
    allowed), 1 otherwise.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from dockplug.client import PluginClient, explained, resolve
    from dockplug.conformance import engine as engines
    from dockplug.conformance import run
    from dockplug.conformance.replay import DEFAULT_SERIES
    from dockplug.conformance.runner import detect_kind
    from dockplug.server import discovery

    create_opts = _parse_opts(opts)
    host_paths = None
    if "://" in target or target.startswith(("/", ".")) or target.endswith(".sock"):
        address = resolve(target)  # a URL or a socket path
    else:
        try:
            address = discovery.find(target)  # a legacy plugin, as dockerd finds it
        except ConfigError as legacy:
            address, host_paths = _managed(target, legacy)
    wait = min(timeout, 10.0)
    with explained(target, wait), PluginClient(address, timeout=wait) as client:
        activate = client.call("Plugin.Activate")
    if kind is None:
        kind = _kind_from(activate, detect_kind)

    # asked before the first check: engines differ in what they send (replays follow)
    if engine_version:
        engine: engines.EngineInfo | None = engines.given(engine_version)
        why = ""
    else:
        engine, why = engines.detect()
    console = Console()
    if engine is not None:
        console.print(f"engine: {escape(engine.describe())}")
    else:
        console.print(
            f"[yellow]engine: unknown: {escape(why)}; replays use dockerd "
            f"{DEFAULT_SERIES}'s recordings (fix: --engine VERSION)[/]"
        )
    result = run(address, kind, create_opts, timeout, set(only) or None, host_paths, engine)
    result.target = target
    table = Table(title=f"dockplug check {escape(target)} ({kind})")
    table.add_column("ID", no_wrap=True)
    table.add_column("CHECK", ratio=2)
    table.add_column("RESULT", no_wrap=True)
    table.add_column("EVIDENCE", ratio=3, overflow="fold")
    for r in result.results:
        style = _STYLE[r.result.value]
        table.add_row(
            r.id,
            escape(r.title),
            f"[{style}]{r.result.value.upper()}[/]",
            escape(r.evidence),
        )
    console.print(table)
    for line in result.cleanup:
        console.print(f"[yellow]cleanup: {escape(line)}[/]")
    colour = "green" if result.ok else "red"
    console.print(f"[{colour}]{escape(result.summary())}[/] ({result.calls} calls)")
    if report is not None:
        result.write(report)
        console.print(f"report written to {report}")
    raise SystemExit(result.exit_code)
