"""``dockplug status``: is a plugin fit to answer dockerd, and if not, why."""

from __future__ import annotations

import http.client
import json
import socket
import sys
from typing import Any

import click

from dockplug.errors import ConfigError


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _from_side_listener(target: str, timeout: float) -> dict[str, Any]:
    """GET /health of a metrics listener: ``http://HOST:PORT`` or ``unix:PATH``."""
    conn: http.client.HTTPConnection
    if target.startswith("unix:"):
        conn = _UnixHTTPConnection(target[5:], timeout)
    else:
        rest = target.removeprefix("http://").rstrip("/")
        host, _, port = rest.rpartition(":")
        conn = http.client.HTTPConnection(host or "127.0.0.1", int(port or 80), timeout=timeout)
    try:
        conn.request("GET", "/health")
        data: dict[str, Any] = json.loads(conn.getresponse().read())
        return data
    finally:
        conn.close()


def _from_plugin(target: str, timeout: float) -> dict[str, Any]:
    """``Dockplug.Health`` on the plugin socket (dockplug plugins answer it; others 404)."""
    from dockplug.client import PluginClient, explained

    with explained(target, timeout), PluginClient(target, timeout=timeout) as client:
        reply = client.call("Dockplug.Health")
    if reply.status == 404:
        raise ConfigError(
            f"{target} answers the plugin protocol but not Dockplug.Health: it is not served "
            "by dockplug (or by an older one); try dockplug call TARGET Plugin.Activate"
        )
    if reply.error is not None:
        raise ConfigError(f"{target}: Dockplug.Health: {reply.error}")
    data: dict[str, Any] = reply.json
    return data


@click.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--timeout", default=5.0, show_default=True, help="Seconds to wait.")
def status(target: str, as_json: bool, timeout: float) -> None:
    """Show whether a plugin is ready, degraded (and why) or starting.

    \b
    TARGET  a plugin name or socket (asked on the plugin socket), or its metrics
            listener: http://HOST:PORT or unix:PATH (GET /health)

    Exit status: 0 when ready, 1 otherwise.
    """
    if target.startswith(("http://", "unix:")) and not target.startswith("unix://"):
        report = _from_side_listener(target, timeout)
    else:
        report = _from_plugin(target, timeout)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=True, header_style="bold")
        for column in ("plugin", "status", "uptime", "reasons"):
            table.add_column(column)
        reasons = report.get("reasons") or []
        table.add_row(
            str(report.get("plugin", "")),
            str(report.get("status", "")),
            f"{float(report.get('uptime_seconds', 0)):.0f}s",
            "\n".join(map(str, reasons)) or "-",
        )
        Console().print(table)
    if not report.get("ready"):
        sys.exit(1)
