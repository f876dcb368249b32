"""``dockplug systemd``: socket and service units that start a legacy plugin before dockerd.

A legacy plugin that starts after dockerd (or after the containers that use it) is the classic
"volume driver not found" at boot. With socket activation systemd listens on the plugin's
socket before docker.service starts, so dockerd's first call waits in the socket's queue while
the plugin starts, instead of failing.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from dockplug.errors import ConfigError
from dockplug.server.discovery import SOCKET_DIR, check_plugin_name


def units(name: str, command: list[str], group: str | None = None) -> dict[str, str]:
    """The ``NAME.socket`` and ``NAME.service`` texts that serve COMMAND (dockplug's arguments,
    e.g. ``serve local --base-dir /srv/vols``) on /run/docker/plugins/NAME.sock."""
    check_plugin_name(name)
    if any(c.isspace() for c in name):  # it also names the units
        raise ConfigError(f"--name {name!r}: a plugin name is a plain file name, e.g. my-volumes")
    if not command or command[0] != "serve":
        raise ConfigError(
            "give the dockplug command to run after --, starting with serve; e.g. "
            "dockplug systemd --name dockplug-local -- serve local"
        )
    if "--name" not in command:
        command = [*command, "--name", name]
    socket = SOCKET_DIR / f"{name}.sock"
    # systemd expands % specifiers and $VARIABLES in ExecStart: keep both literal
    exec_start = shlex.join([sys.executable, "-m", "dockplug", *command])
    exec_start = exec_start.replace("%", "%%").replace("$", "$$")
    group_line = f"SocketGroup={group}\n" if group else ""
    socket_unit = (
        "[Unit]\n"
        f"Description=dockplug plugin {name} (socket, so dockerd can call it at once)\n"
        "Before=docker.service\n"
        "\n"
        "[Socket]\n"
        f"ListenStream={socket}\n"
        "SocketMode=0660\n"
        f"{group_line}"
        "DirectoryMode=0755\n"
        "RemoveOnStop=yes\n"
        "\n"
        "[Install]\n"
        "WantedBy=sockets.target\n"
    )
    service_unit = (
        "[Unit]\n"
        f"Description=dockplug plugin {name}\n"
        f"Requires={name}.socket\n"
        f"After={name}.socket\n"
        "Before=docker.service\n"
        "\n"
        "[Service]\n"
        f"ExecStart={exec_start}\n"
        "Restart=on-failure\n"
        "# SIGTERM: finish the calls in flight, then exit 0\n"
        "KillSignal=SIGTERM\n"
        "TimeoutStopSec=70\n"
        "\n"
        "[Install]\n"
        f"Also={name}.socket\n"
    )
    return {f"{name}.socket": socket_unit, f"{name}.service": service_unit}


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--name", required=True, help="The plugin name (the socket is NAME.sock).")
@click.option(
    "--socket-group",
    metavar="GROUP",
    help="Group owning the socket (0660), e.g. docker; default root.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write NAME.socket and NAME.service into this folder (e.g. /etc/systemd/system) "
    "instead of printing them.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def systemd(
    name: str, socket_group: str | None, output: Path | None, command: tuple[str, ...]
) -> None:
    """Socket-activated systemd units for a legacy plugin, started before dockerd.

    \b
    dockplug systemd --name dockplug-local -o /etc/systemd/system -- serve local
    systemctl daemon-reload && systemctl enable --now dockplug-local.socket
    """
    texts = units(name, list(command), socket_group)
    if output is None:
        for file, text in texts.items():
            click.echo(f"# {file}\n{text}")
        return
    output.mkdir(parents=True, exist_ok=True)
    for file, text in texts.items():
        (output / file).write_text(text)
        click.echo(f"wrote {output / file}")
    click.echo(f"then: systemctl daemon-reload && systemctl enable --now {name}.socket")
