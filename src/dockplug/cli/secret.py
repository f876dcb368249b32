"""``dockplug secret ...``: the named secrets volume options refer to (``-o secret=NAME``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dockplug.drivers.registry import setting_default
from dockplug.errors import ConfigError

_STATE_DIR = click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=setting_default("sshfs", "state_dir"),
    show_default=True,
    help="The plugin's state dir (the store is secrets.json in it).",
)


@click.group(name="secret")
def secret() -> None:
    """Keep passwords in the plugin's 0600 secrets store instead of volume options."""


@secret.command(name="set")
@click.argument("name")
@_STATE_DIR
def set_secret(name: str, state_dir: Path) -> None:
    """Store NAME's value, read from standard input (or asked for without echo on a terminal).

    Volumes use it with -o secret=NAME; the value is never shown again.
    """
    from dockplug.state.secrets import FILE_NAME, SecretStore, check_secret_name

    check_secret_name(name)
    if sys.stdin.isatty():
        value = click.prompt(f"value of {name}", hide_input=True, confirmation_prompt=True)
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
        value = value[:-1] if value.endswith("\r") else value
    if not value:
        raise ConfigError("empty value: nothing stored")
    if "\n" in value or "\0" in value:
        raise ConfigError("a secret value cannot hold line breaks or NUL")
    SecretStore(state_dir / FILE_NAME).set(name, value)
    click.echo(f"stored secret {name}")


@secret.command(name="rm")
@click.argument("name")
@_STATE_DIR
def remove_secret(name: str, state_dir: Path) -> None:
    """Forget NAME (volumes that use it fail to mount until it is set again)."""
    from dockplug.state.secrets import FILE_NAME, SecretStore

    if not SecretStore(state_dir / FILE_NAME).delete(name):
        raise ConfigError(f"no secret {name!r}")
    click.echo(f"removed secret {name}")


@secret.command(name="ls")
@_STATE_DIR
def list_secrets(state_dir: Path) -> None:
    """Names of the stored secrets (never their values)."""
    from dockplug.state.secrets import FILE_NAME, SecretStore

    for name in SecretStore(state_dir / FILE_NAME).names():
        click.echo(name)
