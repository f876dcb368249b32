"""Managed (v2) plugin commands: build, create, enable, disable, rm, set, doctor, push, install,
export, import, rename."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click


def _size(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


@click.command()
@click.argument("driver")
@click.option("--name", required=True, help="Plugin reference: [REGISTRY/]REPO/NAME[:TAG].")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, file_okay=False),
    help="Bundle folder [default: build/NAME].",
)
@click.option(
    "--base",
    "base_text",
    default="debootstrap",
    show_default=True,
    metavar="BASE",
    help="Where the rootfs starts from: debootstrap, image:REF (a local image), tar:PATH (a "
    "rootfs tarball) or dockerfile:PATH (built by dockerd).",
)
@click.option("--create", "do_create", is_flag=True, help="Also register it with dockerd.")
def build(driver: str, name: str, output: Path | None, base_text: str, do_create: bool) -> None:
    """Build a managed-plugin bundle (config.json + rootfs/) for a dockplug DRIVER (local, sshfs)
    or for your own project: DRIVER is then a folder whose pyproject.toml names the driver class
    in a [tool.dockplug] table (driver = "mypkg.plugin:MyDriver"); the project is pip-installed
    into the rootfs next to dockplug.

    By default the rootfs is a Debian bookworm base with python3 (plus the driver's packages,
    e.g. sshfs) made by debootstrap once per package set and cached under
    /var/cache/dockplug/rootfs (DOCKPLUG_ROOTFS_CACHE names the plain python3 base). --base
    takes it instead from an image on the Docker host, a rootfs tarball, or a Dockerfile dockerd
    builds (FROM a local image needs no registry); such a base must already hold python3 of
    this Python's version and the driver's programs, which is checked."""
    from dockplug.packaging.bases import parse_base
    from dockplug.packaging.bundle import build as build_bundle

    result = build_bundle(driver, name, output, base=parse_base(base_text))
    kind = "cold, base made" if result.cold else f"base {result.base}"
    if result.base.kind == "debootstrap" and not result.cold:
        kind = "cached base"
    click.echo(
        f"built {result.path} ({_size(result.size)}, {result.seconds:.1f}s, {kind})", err=True
    )
    if do_create:
        from dockplug.packaging import verbs

        verbs.create(name, result.path)
        click.echo(f"created {name} (disabled); next: dockplug enable {name}", err=True)
    click.echo(str(result.path))


@click.command()
@click.argument("name")
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False, exists=True))
def create(name: str, bundle: Path) -> None:
    """Register the bundle folder BUNDLE with dockerd as plugin NAME (disabled)."""
    from dockplug.packaging import verbs

    verbs.create(name, bundle)
    click.echo(f"created {name} (disabled); next: dockplug enable {name}")


@click.command()
@click.argument("name")
@click.option("--timeout", default=30, show_default=True, help="Seconds dockerd may take.")
def enable(name: str, timeout: int) -> None:
    """Enable plugin NAME, wait for its socket, and run the doctor if it fails."""
    from dockplug.packaging import verbs

    res = verbs.enable(name, timeout=timeout)
    where = f" at {res.socket}" if res.socket else ""
    click.echo(f"enabled {res.name}; socket ready{where} after {res.seconds:.2f}s")


@click.command()
@click.argument("name")
@click.option("--force", "-f", is_flag=True, help="Disable even while volumes use it.")
def disable(name: str, force: bool) -> None:
    """Disable plugin NAME."""
    from dockplug.packaging import engine

    engine.disable(name, force=force)
    click.echo(f"disabled {name}")


@click.command(name="rm")
@click.argument("name")
@click.option("--force", "-f", is_flag=True, help="Remove even while enabled or in use.")
def rm(name: str, force: bool) -> None:
    """Remove plugin NAME."""
    from dockplug.packaging import engine

    engine.remove(name, force=force)
    click.echo(f"removed {name}")


@click.command(name="set")
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
def set_(name: str, pairs: tuple[str, ...]) -> None:
    """Change settings of the disabled plugin NAME (env, args, mount source, device path)."""
    from dockplug.packaging import engine

    engine.set_options(name, list(pairs))
    click.echo(f"set {' '.join(pairs)} on {name}")


@click.command()
@click.argument("target", required=False)
def doctor(target: str | None) -> None:
    """Diagnose a bundle folder or an installed plugin (all installed plugins if no TARGET).

    Prints one line per finding with the fix; exit status 1 if any is an error."""
    from dockplug.packaging import engine
    from dockplug.packaging.doctor import Finding, diagnose_bundle, diagnose_installed

    results: list[tuple[str, list[Finding]]] = []
    if target and (Path(target) / "config.json").exists():
        results.append((target, diagnose_bundle(Path(target))))
    else:
        client = engine.connect(timeout=30)
        names = [target] if target else [p.name for p in client.plugins.list()]
        if not names:
            click.echo("no managed plugins installed")
        for name in names:
            results.append((name, diagnose_installed(name, client)))
    failed = False
    for what, findings in results:
        if not findings:
            click.echo(f"{what}: ok")
        for f in findings:
            click.echo(f"{what}: {f}")
            failed = failed or f.level == "error"
    if failed:
        sys.exit(1)


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _lines(console: Any) -> Any:
    """Print Engine API progress lines as they are (no rich markup: they contain [...])."""
    return lambda line: console.print(line, markup=False, highlight=False)


@click.command()
@click.argument("name")
def push(name: str) -> None:
    """Push plugin NAME to its registry (NAME must be REGISTRY/REPO/NAME[:TAG], e.g.
    127.0.0.1:5000/dockplug/local:0.1; dockplug rename gives a plugin such a name)."""
    from dockplug.packaging import engine

    console = _stderr()
    res = engine.push(name, progress=_lines(console))
    digest = f" ({res.digest})" if res.digest else ""
    click.echo(f"pushed {res.name}{digest} in {res.seconds:.1f}s")


@click.command()
@click.argument("ref")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE...]")
@click.option("--alias", help="Local name for the plugin [default: REF].")
@click.option(
    "--grant-all-permissions", "grant_all", is_flag=True, help="Grant what it asks, no prompt."
)
@click.option("--disable", "disabled", is_flag=True, help="Do not enable it after install.")
def install(
    ref: str, pairs: tuple[str, ...], alias: str | None, grant_all: bool, disabled: bool
) -> None:
    """Install plugin REF from a registry: show the privileges it asks for, ask (unless
    --grant-all-permissions), pull granting exactly those, apply KEY=VALUE settings, enable."""
    from rich.table import Table
    from rich.text import Text

    from dockplug.packaging import engine, verbs

    engine.check_pairs(list(pairs))
    console = _stderr()
    client = engine.connect()
    asked = engine.privileges(ref, client)
    if asked:
        table = Table(title=f"{ref} asks for")
        table.add_column("PRIVILEGE")
        table.add_column("VALUE", overflow="fold")  # never cut what is being granted
        table.add_column("WHAT IT ALLOWS")
        for p in asked:
            table.add_row(
                Text(str(p.get("Name", ""))),
                Text(", ".join(map(str, p.get("Value") or []))),
                Text(str(p.get("Description", ""))),
            )
        console.print(table)
    else:
        console.print(f"dockerd reports no privileges to grant for {ref}", markup=False)
    if asked and not grant_all:
        if not sys.stdin.isatty():
            raise engine.EngineError(
                f"{ref} asks for the privileges above and there is no terminal to ask; fix: "
                "review them and pass --grant-all-permissions"
            )
        if not click.confirm("Grant these privileges?", default=False, err=True):
            raise engine.EngineError(f"not installing {ref}: privileges not granted")
    res = verbs.install(
        ref,
        asked,
        alias=alias,
        settings=list(pairs),
        enable_after=not disabled,
        progress=_lines(console),
        client=client,
    )
    click.echo(f"installed {res.name} from {ref} in {res.pull_seconds:.1f}s")
    if res.enabled is None:
        click.echo(f"left disabled; next: dockplug enable {res.name}")
    else:
        where = f" at {res.enabled.socket}" if res.enabled.socket else ""
        click.echo(f"enabled {res.name}; socket ready{where} after {res.enabled.seconds:.2f}s")


@click.command(name="export")
@click.argument("name")
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Archive to write, e.g. plugin.tar.gz.",
)
def export_(name: str, output: Path) -> None:
    """Write plugin NAME (config.json, rootfs, settings) into one tar.gz for dockplug import
    on a host with no registry access. dockerd must run on this machine."""
    from dockplug.packaging.transfer import export

    res = export(name, output, console=_stderr())
    click.echo(
        f"exported {res.name} to {res.path} ({_size(res.size)}; rootfs {_size(res.rootfs_size)}"
        f") in {res.seconds:.1f}s"
    )


@click.command(name="import")
@click.argument("archive", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--name", help="Name for the plugin [default: the exported name].")
@click.option("--enable", "do_enable", is_flag=True, help="Enable it once created.")
def import_(archive: Path, name: str | None, do_enable: bool) -> None:
    """Create a plugin from ARCHIVE (made by dockplug export), with its settings re-applied;
    left disabled unless --enable."""
    from dockplug.packaging.transfer import import_ as do_import

    res = do_import(archive, name, enable_after=do_enable, console=_stderr())
    settings = f" with {' '.join(res.settings)}" if res.settings else ""
    click.echo(f"imported {res.name}{settings} in {res.seconds:.1f}s")
    if res.enabled is None:
        click.echo(f"left disabled; next: dockplug enable {res.name}")
    else:
        click.echo(f"enabled {res.name}; socket ready after {res.enabled.seconds:.2f}s")


@click.command()
@click.argument("old")
@click.argument("new")
def rename(old: str, new: str) -> None:
    """Re-create plugin OLD as NEW (same rootfs, config and settings; enabled again if OLD
    was), then remove OLD. OLD must not be in use (it is disabled on the way)."""
    from dockplug.packaging.transfer import rename as do_rename

    res = do_rename(old, new, console=_stderr())
    state = "enabled" if res.enabled else "disabled"
    click.echo(f"renamed {res.old} to {res.new} ({state}) in {res.seconds:.1f}s")
