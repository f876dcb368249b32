"""``dockplug serve sshfs``: remote folders over SSH as volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dockplug.cli.options import serve_options, transport_options
from dockplug.drivers.sshfs import DEFAULT_BASE_DIR, DEFAULT_MOUNT_TIMEOUT, DEFAULT_STATE_DIR


@click.command(name="sshfs")
@click.option(
    "--base-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_BASE_DIR,
    show_default=True,
    help="Where each volume's mountpoint is made.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the state database, the secrets store and ssh configs live.",
)
@click.option(
    "--allow-inline-secrets",
    is_flag=True,
    help="Accept -o password=...; it is then kept only in the secrets store.",
)
@click.option(
    "--mount-timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_MOUNT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Give up on an sshfs that has not mounted after SECONDS.",
)
@transport_options(default_name="dockplug-sshfs")
def command(
    base_dir: Path,
    state_dir: Path,
    allow_inline_secrets: bool,
    mount_timeout: float,
    **params: Any,
) -> None:
    """Serve sshfs volumes: docker volume create -d dockplug-sshfs -o sshcmd=user@host:/path NAME.

    Passwords by reference: -o secret=NAME (dockplug secret set NAME), -o password_file=PATH,
    or a key with -o identity_file=PATH. Host keys are checked strictly (-o host_key=...,
    -o known_hosts_file=PATH). -o help lists every option.
    """
    from dockplug.drivers.sshfs import SshfsDriver
    from dockplug.server.runner import run

    opts = serve_options(params)
    driver = SshfsDriver(
        base_dir=base_dir,
        state_dir=state_dir,
        allow_inline_secrets=allow_inline_secrets,
        mount_timeout=mount_timeout,
    )
    run(driver, opts)
