"""``dockplug logs status``: what dockplug-logs kept and forwarded, read from its state."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dockplug.drivers.registry import setting_default
from dockplug.errors import ConfigError


@click.group(name="logs")
def logs() -> None:
    """Inspect the dockplug-logs log driver."""


def status_rows(state_dir: Path) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """(one row per container, one row per sink and container) from the state database,
    which the plugin updates every second (counters) and after every batch (positions)."""
    from dockplug.drivers.log.state import LogState

    db = state_dir / "state.db"
    if not db.exists():
        raise ConfigError(f"{db}: no state here; fix: pass the plugin's --state-dir")
    state = LogState(db, readonly=True)
    try:
        containers = state.containers()
        fifos = {c for _, c in state.fifos()}
        sinks = {s: (u, e) for s, u, e in state.sinks()}
        positions = state.positions()
    finally:
        state.close()
    entries = {c.id: c.entries for c in containers}
    crow: list[dict[str, object]] = [
        {"container": c.id[:12], "name": c.info.get("name", ""), "logging": c.id in fifos,
         "bytes": c.bytes, "entries": c.entries, "dropped": c.dropped}
        for c in containers
    ]  # fmt: skip
    srow: list[dict[str, object]] = []
    for sink, cid, sent in positions:
        url, error = sinks.get(sink, (sink, ""))
        srow.append({"sink": url, "container": cid[:12], "sent": sent,
                     "lag": max(0, entries.get(cid, 0) - sent), "error": error})  # fmt: skip
    return crow, srow


@logs.command()
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=setting_default("logs", "state_dir"),
    show_default=True,
    help="The plugin's --state-dir.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(state_dir: Path, as_json: bool) -> None:
    """Per container: bytes, entries and entries dropped; per sink: entries sent and the lag
    (entries kept but not yet sent), with the sink's last error."""
    containers, sinks = status_rows(state_dir)
    if as_json:
        click.echo(json.dumps({"containers": containers, "sinks": sinks}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, rows in (("containers", containers), ("sinks", sinks)):
        table = Table(title=title)
        for key in rows[0] if rows else ["(none)"]:
            table.add_column(key)
        for row in rows:
            table.add_row(*(str(v) for v in row.values()))
        console.print(table)
