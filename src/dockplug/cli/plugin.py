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
@click.argument("driver", required=False)
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
    default=None,
    metavar="BASE",
    help="For a dockplug DRIVER or project: where the rootfs starts from: debootstrap "
    "(default), image:REF (a local image), tar:PATH (a rootfs tarball) or dockerfile:PATH "
    "(built by dockerd).",
)
@click.option("--image", metavar="REF", help="Any plugin: its rootfs is this local image's.")
@click.option(
    "--dockerfile", metavar="PATH", help="Any plugin: its rootfs is built by dockerd from this."
)
@click.option(
    "--rootfs", metavar="DIR", help="Any plugin: its rootfs is a copy of DIR (or DIR/rootfs)."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="config.json to use [default: beside the Dockerfile or rootfs/, else generated].",
)
@click.option(
    "--type",
    "types",
    multiple=True,
    type=click.Choice(["volume", "network", "ipam", "authz", "log"]),
    help="Generated config: the plugin's interface (repeatable).",
)
@click.option("--socket", help="Generated config: the socket it creates in /run/docker/plugins.")
@click.option(
    "--entrypoint",
    help="Generated config: program and arguments, shell words or a JSON array [default: the "
    "image's Entrypoint+Cmd].",
)
@click.option("--cap", "caps", multiple=True, metavar="CAP", help="e.g. CAP_SYS_ADMIN.")
@click.option("--device", "devices", multiple=True, metavar="PATH", help="e.g. /dev/fuse.")
@click.option(
    "--mount", "mounts", multiple=True, metavar="[NAME=]SRC:DEST", help="A settable bind mount."
)
@click.option("--env", "envs", multiple=True, metavar="NAME=VALUE[:settable]")
@click.option("--network", type=click.Choice(["host"]), help="Share the host's network.")
@click.option("--propagated-mount", metavar="PATH", help="Where the plugin mounts volumes.")
@click.option("--description", help="Generated config: the plugin's description.")
@click.option("--create", "do_create", is_flag=True, help="Also register it with dockerd.")
@click.option("--enable", "do_enable", is_flag=True, help="Also create and enable it.")
def build(
    driver: str | None,
    name: str,
    output: Path | None,
    base_text: str | None,
    image: str | None,
    dockerfile: str | None,
    rootfs: str | None,
    config_path: Path | None,
    types: tuple[str, ...],
    socket: str | None,
    entrypoint: str | None,
    caps: tuple[str, ...],
    devices: tuple[str, ...],
    mounts: tuple[str, ...],
    envs: tuple[str, ...],
    network: str | None,
    propagated_mount: str | None,
    description: str | None,
    do_create: bool,
    do_enable: bool,
) -> None:
    """Build a managed-plugin bundle (config.json + rootfs/), optionally create and enable it.

    \b
    dockplug build DRIVER --name REPO/NAME[:TAG] [--base BASE]
      a dockplug DRIVER (local, sshfs) or your own project: a folder whose pyproject.toml
      names the driver class in a [tool.dockplug] table (driver = "mypkg.plugin:MyDriver").
      The rootfs is a Debian bookworm base with python3 (plus the driver's packages) made by
      debootstrap once per package set and cached under /var/cache/dockplug/rootfs; --base
      takes it from an image, a tarball or a Dockerfile instead, which must then hold python3
      of this Python's version and the driver's programs.
    \b
    dockplug build --image REF|--dockerfile PATH|--rootfs DIR --name REPO/NAME[:TAG]
      any plugin, whatever its language: the rootfs of a never-started container of the
      image (or of the image dockerd builds, no pull forced), or a copy of DIR. config.json is
      --config, the one beside the Dockerfile or rootfs/, or generated from --type, --socket,
      --entrypoint, --cap, --device, --mount, --env, --network, --propagated-mount.

    The doctor's findings are printed; --create refuses a bundle it finds broken, and a failed
    --enable says why."""
    from dockplug.errors import ConfigError

    console = _stderr()
    flagged = [
        flag
        for flag, value in (
            ("--type", types), ("--socket", socket), ("--entrypoint", entrypoint),
            ("--cap", caps), ("--device", devices), ("--mount", mounts), ("--env", envs),
            ("--network", network), ("--propagated-mount", propagated_mount),
            ("--description", description), ("--config", config_path),
        )
        if value
    ]  # fmt: skip
    any_plugin = bool(image or dockerfile or rootfs)
    if driver and any_plugin:
        raise ConfigError(
            f"give either DRIVER ({driver}) or --image/--dockerfile/--rootfs, not both; fix: "
            "DRIVER is for dockplug drivers and projects, the flags for any other plugin"
        )
    if any_plugin and base_text:
        raise ConfigError(
            "--base is for dockplug's own drivers; fix: with --image/--dockerfile/--rootfs "
            "the rootfs is that image or folder, as it is"
        )
    if not any_plugin and flagged:
        raise ConfigError(
            f"{', '.join(flagged)} describe a plugin built from --image, --dockerfile or "
            "--rootfs; fix: add one of those (a dockplug DRIVER has its own config)"
        )
    if not driver and not any_plugin:
        raise ConfigError(
            "nothing to build; fix: give a DRIVER (local, sshfs, a project folder) or "
            "--image REF, --dockerfile PATH or --rootfs DIR"
        )
    if any_plugin:
        from dockplug.packaging.anyplugin import Declared, build_any, source_of

        declared = Declared(
            types=list(types),
            socket=socket,
            entrypoint=entrypoint,
            capabilities=list(caps),
            devices=list(devices),
            mounts=list(mounts),
            env=list(envs),
            network=network or "",
            propagated_mount=propagated_mount or "",
            description=description or "",
        )
        src = source_of(image, dockerfile, rootfs)
        built = build_any(src, name, output, config=config_path, declared=declared, console=console)
        result = built.result
        kind = f"from {src.flag}, config.json from {built.config_from}"
        entry = " ".join(built.config.entrypoint)
        console.print(f"entrypoint: {entry}", markup=False, highlight=False, soft_wrap=True)
    else:
        from dockplug.packaging.bases import parse_base
        from dockplug.packaging.bundle import build as build_bundle

        assert driver is not None
        result = build_bundle(driver, name, output, base=parse_base(base_text or "debootstrap"))
        kind = "cold, base made" if result.cold else f"base {result.base}"
        if result.base.kind == "debootstrap" and not result.cold:
            kind = "cached base"
    click.echo(
        f"built {result.path} ({_size(result.size)}, {result.seconds:.1f}s, {kind})", err=True
    )
    if any_plugin:
        _report_bundle(result.path, console)
    if do_create or do_enable:
        from dockplug.packaging import verbs

        verbs.create(name, result.path, console=console)
        click.echo(f"created {name} (disabled)", err=True)
        if do_enable:
            res = verbs.enable(name)
            where = f" at {res.socket}" if res.socket else ""
            click.echo(f"enabled {name}; socket ready{where} after {res.seconds:.2f}s", err=True)
        else:
            click.echo(f"next: dockplug enable {name}", err=True)
    click.echo(str(result.path))


def _report_bundle(bundle: Path, console: Any) -> None:
    """The doctor's findings on a fresh bundle, and where its socket will appear."""
    import json

    from dockplug.packaging.doctor import diagnose_bundle, socket_where

    findings = diagnose_bundle(bundle)
    for f in findings:
        console.print(f"doctor: {f}", markup=False, highlight=False, soft_wrap=True)
    socket = (json.loads((bundle / "config.json").read_text()).get("interface") or {}).get("socket")
    if socket and not any(f.level == "error" for f in findings):
        console.print(
            f"doctor: ok; {socket_where(socket)}", markup=False, highlight=False, soft_wrap=True
        )


@click.command()
@click.argument("name")
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False, exists=True))
def create(name: str, bundle: Path) -> None:
    """Register the bundle folder BUNDLE with dockerd as plugin NAME (disabled)."""
    from dockplug.packaging import verbs

    verbs.create(name, bundle, console=_stderr())
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
    return lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)


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
