"""The ``dockplug`` command: a thin layer that parses arguments and prints results."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from dockplug import __version__
from dockplug.errors import ConfigError, PluginError
from dockplug.facts import managed_socket
from dockplug.server import discovery

# Subcommands by name, imported when used: `dockplug serve` must not load the packaging,
# conformance and Engine API code (and their libraries) before it can answer dockerd.
LAZY_COMMANDS = {
    "serve": "dockplug.cli.serve:serve",
    "local": "dockplug.cli.local:local",
    "check": "dockplug.cli.check:check",
    "record": "dockplug.cli.record:record",
    "secret": "dockplug.cli.secret:secret",
    "build": "dockplug.cli.plugin:build",
    "create": "dockplug.cli.plugin:create",
    "enable": "dockplug.cli.plugin:enable",
    "disable": "dockplug.cli.plugin:disable",
    "rm": "dockplug.cli.plugin:rm",
    "set": "dockplug.cli.plugin:set_",
    "doctor": "dockplug.cli.plugin:doctor",
    "push": "dockplug.cli.plugin:push",
    "install": "dockplug.cli.plugin:install",
    "export": "dockplug.cli.plugin:export_",
    "import": "dockplug.cli.plugin:import_",
    "rename": "dockplug.cli.plugin:rename",
    "systemd": "dockplug.cli.systemd:systemd",
    "status": "dockplug.cli.status:status",
    "authz": "dockplug.cli.authz:authz",
    "logs": "dockplug.cli.logs:logs",
    "net": "dockplug.cli.net:net",
}


class _Main(click.Group):
    """Turns expected failures into one clear line and exit status 1 (no traceback); loads
    the commands of LAZY_COMMANDS on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            import importlib

            module, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, PluginError) as exc:
            click.echo(f"dockplug: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            click.echo(f"dockplug: {exc.strerror or exc}{where}", err=True)
            sys.exit(1)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dockplug")
def cli() -> None:
    """Write, test, package and run Docker Engine plugins."""


@cli.command()
@click.argument("target")
@click.argument("endpoint")
@click.argument("body", required=False)
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for a reply.")
@click.option("--raw", is_flag=True, help="Print the reply body as received.")
def call(target: str, endpoint: str, body: str | None, timeout: float, raw: bool) -> None:
    """Call ENDPOINT of a plugin the way dockerd does and print the JSON reply.

    \b
    TARGET    a plugin name (found like dockerd finds it), a socket path,
              or a URL: unix:///path, tcp://host:port, https://host:port
    ENDPOINT  e.g. Plugin.Activate, VolumeDriver.List
    BODY      JSON (omit for an empty body; '-' reads standard input)

    Exit status: 0 on success, 1 if the plugin answered with an error.
    """
    from dockplug.client import PluginClient, explained

    payload: Any = None
    if body == "-":
        body = sys.stdin.read()
    if body is not None and body.strip():
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise ConfigError(f"BODY is not valid JSON: {exc}") from exc
    with explained(target, timeout), PluginClient(target, timeout=timeout) as client:
        reply = client.call(endpoint, payload)
    if raw:
        click.echo(reply.raw.decode("utf-8", "replace"), nl=False)
    else:
        try:
            click.echo(json.dumps(reply.json, indent=2))
        except ValueError:
            click.echo(reply.raw.decode("utf-8", "replace"))
    error = reply.error
    if error is not None:
        click.echo(f"dockplug: {endpoint}: HTTP {reply.status}: {error}", err=True)
        sys.exit(1)


def _activate(addr: discovery.PluginAddress) -> tuple[str, str]:
    from http.client import HTTPException

    from dockplug.client import PluginClient

    try:
        with PluginClient(addr, timeout=2.0) as client:
            reply = client.call("Plugin.Activate")
        if reply.error:
            return "", f"error: {reply.error}"
        data = reply.json
    except ConnectionRefusedError:
        return "", "stale (nothing listens)"
    except TimeoutError:
        return "", "no answer in 2s"
    except OSError as exc:
        return "", f"unreachable: {exc.strerror or exc}"
    except HTTPException as exc:
        return "", f"error: not an HTTP reply ({exc!r})"
    except (ConfigError, ValueError) as exc:  # an address we cannot dial, a reply not JSON
        return "", f"error: {exc}"
    implements = data.get("Implements") if isinstance(data, dict) else None
    if not isinstance(implements, list):
        return "", "error: the Activate reply has no Implements list"
    return ", ".join(map(str, implements)), "ok"


Row = tuple[str, str, str, str, str]


def _managed() -> tuple[list[Row], str | None]:
    try:
        from dockplug.engine_api import docker_client

        engine = docker_client(timeout=5)
        plugins = engine.plugins.list()
    except Exception as exc:
        return [], f"Engine API not reachable ({type(exc).__name__}); managed plugins not listed"
    rows: list[Row] = []
    for p in plugins:
        types = p.attrs.get("Config", {}).get("Interface", {}).get("Types", [])
        socket_name = p.attrs.get("Config", {}).get("Interface", {}).get("Socket", "")
        rows.append(
            (
                p.name,
                "managed",
                str(managed_socket(p.id, socket_name)) if p.enabled else "-",
                ", ".join(types),
                "enabled" if p.enabled else "disabled",
            )
        )
    return rows, None


@cli.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_plugins(as_json: bool) -> None:
    """List the plugins this host can discover: sockets, .spec/.json files (activated to learn
    what they implement) and managed plugins through the Engine API (DOCKER_HOST honoured)."""
    from concurrent.futures import ThreadPoolExecutor

    from rich.console import Console
    from rich.table import Table

    legacy = discovery.scan()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(_activate, legacy))
    rows: list[Row] = [
        (a.name, f"legacy {a.source.rsplit('.', 1)[-1]}", a.url, impl, status)
        for a, (impl, status) in zip(legacy, results, strict=True)
    ]
    managed, warning = _managed()
    rows += managed
    if as_json:
        keys = ("name", "kind", "address", "implements", "status")
        click.echo(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2))
        return
    table = Table("NAME", "KIND", "ADDRESS", "IMPLEMENTS", "STATUS", box=None)
    for row in rows:
        table.add_row(*row)
    console = Console()
    if rows:
        console.print(table)
    else:
        console.print("no plugins found")
    if warning:
        Console(stderr=True).print(f"[yellow]{warning}[/yellow]")


def main() -> None:
    cli(prog_name="dockplug")
