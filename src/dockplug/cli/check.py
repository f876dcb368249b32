"""``dockplug check``: the conformance harness from the command line."""

from __future__ import annotations

from pathlib import Path

import click

from dockplug.errors import ConfigError

_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}


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
    type=click.Choice(["volume"]),
    default="volume",
    show_default=True,
    help="Which plugin protocol to check.",
)
@click.option(
    "-o",
    "--opt",
    "opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="A driver option for the test volume's Create (repeatable), like docker volume create -o.",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the results as JSON to this file.",
)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for a reply.")
@click.option("--only", multiple=True, metavar="ID", help="Run only these check ids (repeatable).")
def check(
    target: str,
    kind: str,
    opts: tuple[str, ...],
    report: Path | None,
    timeout: float,
    only: tuple[str, ...],
) -> None:
    """Play dockerd against a plugin and check every reply against the protocol.

    \b
    TARGET  a plugin name (found like dockerd finds it), a socket path,
            or a URL: unix:///path, tcp://host:port, https://host:port

    The run creates, mounts and removes volumes named dpcheck-*; it cleans up after itself.
    Exit status: 0 if no check failed (warnings allowed), 1 otherwise.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from dockplug.client import PluginClient, explained, resolve
    from dockplug.testing.harness import run

    create_opts = _parse_opts(opts)
    address = resolve(target)
    wait = min(timeout, 10.0)
    with explained(target, wait), PluginClient(address, timeout=wait) as client:
        client.call("Plugin.Activate")

    result = run(address, kind, create_opts, timeout, set(only) or None)
    result.target = target
    table = Table(title=f"dockplug check {escape(target)}")
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
    console = Console()
    console.print(table)
    for line in result.cleanup:
        console.print(f"[yellow]cleanup: {escape(line)}[/]")
    colour = "green" if result.ok else "red"
    console.print(f"[{colour}]{escape(result.summary())}[/] ({result.calls} calls)")
    if report is not None:
        result.write(report)
        console.print(f"report written to {report}")
    raise SystemExit(result.exit_code)
