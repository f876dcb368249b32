"""``dockplug local ...``: maintenance of the local volume driver."""

from __future__ import annotations

import os
from pathlib import Path

import click

from dockplug.drivers.registry import setting_default
from dockplug.errors import ConfigError


@click.group(name="local")
def local() -> None:
    """Maintain the local volume driver's state."""


@local.command()
@click.option(
    "--plugin",
    default="dockplug-local",
    show_default=True,
    help="Running plugin to ask (name, socket path or URL).",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=setting_default("local", "state_dir"),
    show_default=True,
    help="Used directly when the plugin is not running.",
)
@click.option(
    "--base-dir",
    type=click.Path(path_type=Path),
    default=setting_default("local", "base_dir"),
    show_default=True,
)
@click.option("--docker-host", metavar="URL", help="Engine API [default: DOCKER_HOST].")
def gc(plugin: str, state_dir: Path, base_dir: Path, docker_host: str | None) -> None:
    """Clear mount counts of volumes no running container uses (e.g. after dockerd crashed),
    so Remove works again. Asks the running plugin; edits the state itself if none runs."""
    from dockplug.client import PluginClient

    # the plugin may run with another environment: tell it which engine *we* mean
    docker_host = docker_host or os.environ.get("DOCKER_HOST")
    try:
        with PluginClient(plugin, timeout=120) as client:
            reply = client.call("DockplugVolume.Gc", {"DockerHost": docker_host})
        if reply.error:
            raise ConfigError(f"gc failed: {reply.error}")
        cleared = (reply.json or {}).get("Cleared", {})
    except (ConfigError, OSError) as exc:
        if isinstance(exc, ConfigError) and "gc failed" in str(exc):
            raise
        from dockplug.drivers.volume import gc as volume_gc
        from dockplug.drivers.volume.local import LocalDriver

        driver = LocalDriver(base_dir=base_dir, state_dir=state_dir, log=click.echo)
        try:
            cleared = volume_gc.collect(driver, docker_host)
        finally:
            driver.shutdown()
    if cleared:
        for name, count in sorted(cleared.items()):
            click.echo(f"{name}: cleared {count} stale mount(s)")
    else:
        click.echo("no stale mounts")
