"""Transport options shared by every ``dockplug serve`` subcommand."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dockplug.errors import ConfigError
from dockplug.facts import DEFAULT_BUSY_POLL_US
from dockplug.server import discovery
from dockplug.server.runner import ServeOptions, TLSSettings

_PATH = click.Path(path_type=Path)
_FILE = click.Path(path_type=Path, exists=True, dir_okay=False)


def transport_options(default_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        opts = [
            click.option(
                "--name",
                default=default_name,
                show_default=True,
                help="Plugin name: the -d/--driver value users give docker.",
            ),
            click.option(
                "--socket",
                type=_PATH,
                help="Unix socket path [default: /run/docker/plugins/NAME.sock].",
            ),
            click.option("--tcp", metavar="HOST:PORT", help="Listen on TCP instead of a socket."),
            click.option(
                "--advertise",
                metavar="HOST:PORT",
                help="Address written to the discovery file for --tcp.",
            ),
            click.option("--tls-cert", type=_FILE, help="Server certificate (PEM); enables TLS."),
            click.option("--tls-key", type=_FILE, help="Server private key (PEM)."),
            click.option(
                "--tls-ca",
                type=_FILE,
                help="CA dockerd uses to verify this server (written to NAME.json).",
            ),
            click.option(
                "--tls-client-ca", type=_FILE, help="Require client certificates signed by this CA."
            ),
            click.option(
                "--tls-client-cert",
                type=_FILE,
                help="Client certificate dockerd presents (written to NAME.json).",
            ),
            click.option("--tls-client-key", type=_FILE, help="Key for --tls-client-cert."),
            click.option(
                "--spec-dir",
                type=_PATH,
                default=discovery.SPEC_DIRS[0],
                show_default=True,
                help="Where .spec/.json discovery files go.",
            ),
            click.option(
                "--announce",
                type=click.Choice(["auto", "spec", "json", "none"]),
                default="auto",
                show_default=True,
                help="Discovery file to write (auto: only when dockerd needs one).",
            ),
            click.option("--socket-group", metavar="GROUP", help="Group owning the socket."),
            click.option(
                "--metrics",
                metavar="HOST:PORT|unix:PATH",
                envvar="DOCKPLUG_METRICS",  # settable in a managed plugin
                help="Serve /metrics (Prometheus) and /health here, beside the plugin socket "
                "[env DOCKPLUG_METRICS; default: off].",
            ),
            click.option(
                "--log-format",
                type=click.Choice(["text", "json"]),
                default="text",
                show_default=True,
                envvar="DOCKPLUG_LOG_FORMAT",
                help="The plugin's own log lines: text, or one JSON object per line "
                "[env DOCKPLUG_LOG_FORMAT].",
            ),
            click.option(
                "--busy-poll-us",
                type=click.IntRange(0, 10_000),
                default=DEFAULT_BUSY_POLL_US,
                show_default=True,
                envvar="DOCKPLUG_BUSY_POLL_US",
                help="After a reply, keep polling the sockets this long before sleeping: "
                "dockerd's next call in a sequence is answered without a wake-up from idle "
                "(0: off) [env DOCKPLUG_BUSY_POLL_US].",
            ),
            click.option(
                "--debug",
                is_flag=True,
                envvar="DOCKPLUG_DEBUG",  # settable in a managed plugin: docker plugin set
                help="Also log request and reply bodies (secrets masked) [env DOCKPLUG_DEBUG].",
            ),
        ]
        wrapped = func
        for opt in reversed(opts):
            wrapped = opt(wrapped)
        return functools.wraps(func)(wrapped)

    return decorate


TRANSPORT_KEYS = (
    "name",
    "socket",
    "tcp",
    "advertise",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_client_ca",
    "tls_client_cert",
    "tls_client_key",
    "spec_dir",
    "announce",
    "socket_group",
    "metrics",
    "log_format",
    "busy_poll_us",
    "debug",
)


def serve_options(params: dict[str, Any]) -> ServeOptions:
    """Pops the transport options out of ``params`` and validates their combination."""
    p = {key: params.pop(key) for key in TRANSPORT_KEYS}
    if p["socket"] and p["tcp"]:
        raise ConfigError("--socket and --tcp exclude each other: pick one transport")
    tls = None
    if p["tls_cert"] or p["tls_key"]:
        if not (p["tls_cert"] and p["tls_key"]):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if not p["tcp"]:
            raise ConfigError("TLS needs --tcp HOST:PORT (dockerd speaks TLS only over TCP)")
        if bool(p["tls_client_cert"]) != bool(p["tls_client_key"]):
            raise ConfigError("--tls-client-cert and --tls-client-key go together")
        tls = TLSSettings(
            cert=p["tls_cert"],
            key=p["tls_key"],
            ca=p["tls_ca"],
            client_ca=p["tls_client_ca"],
            client_cert=p["tls_client_cert"],
            key_for_client=p["tls_client_key"],
        )
    elif p["tls_ca"] or p["tls_client_ca"] or p["tls_client_cert"]:
        raise ConfigError("TLS options need --tls-cert and --tls-key")
    return ServeOptions(
        name=p["name"],
        socket=p["socket"],
        tcp=p["tcp"],
        advertise=p["advertise"],
        tls=tls,
        spec_dir=p["spec_dir"],
        announce=p["announce"],
        socket_group=p["socket_group"],
        debug=p["debug"],
        metrics=p["metrics"] or None,
        log_format=p["log_format"],
        busy_poll=p["busy_poll_us"] / 1e6,
    )
