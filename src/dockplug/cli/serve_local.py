"""``dockplug serve local``: the persistent local volume driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dockplug.cli.options import serve_options, transport_options
from dockplug.drivers.local import DEFAULT_BASE_DIR, DEFAULT_STATE_DIR


@click.command(name="local")
@click.option(
    "--base-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_BASE_DIR,
    show_default=True,
    help="Where volume folders are created.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the state database and size-limit images live.",
)
@click.option(
    "--allowed-root",
    type=click.Path(path_type=Path),
    help="Only accept -o mountpoint=PATH inside this folder.",
)
@click.option("--keep-data", is_flag=True, help="Remove forgets volumes but keeps their folders.")
@click.option(
    "--scope",
    type=click.Choice(["local", "global"]),
    default="local",
    show_default=True,
    help="global: the base dir is storage shared by all hosts.",
)
@click.option(
    "--gc-interval",
    type=float,
    default=0,
    show_default=True,
    metavar="SECONDS",
    help="Every SECONDS, clear mount counts no running container backs (0: off).",
)
@click.option("--docker-host", metavar="URL", help="Engine API for gc [default: DOCKER_HOST].")
@transport_options(default_name="dockplug-local")
def command(
    base_dir: Path,
    state_dir: Path,
    allowed_root: Path | None,
    keep_data: bool,
    scope: str,
    gc_interval: float,
    docker_host: str | None,
    **params: Any,
) -> None:
    """Serve persistent local volumes: docker volume create -d dockplug-local NAME.

    Options users may give with -o: mountpoint, uid, gid, mode, size (-o help lists them).
    """
    from dockplug.drivers.local import LocalDriver
    from dockplug.server.runner import run

    opts = serve_options(params)
    driver = LocalDriver(
        base_dir=base_dir,
        state_dir=state_dir,
        allowed_root=allowed_root,
        keep_data=keep_data,
        scope=scope,
        gc_interval=gc_interval,
        docker_host=docker_host,
    )
    run(driver, opts)
