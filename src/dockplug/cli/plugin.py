"""Managed (v2) plugin commands: build, create, enable, disable, rm, set, doctor."""

from __future__ import annotations

import sys
from pathlib import Path

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
@click.option("--create", "do_create", is_flag=True, help="Also register it with dockerd.")
def build(driver: str, name: str, output: Path | None, do_create: bool) -> None:
    """Build a managed-plugin bundle (config.json + rootfs/) for a dockplug DRIVER (local).

    The rootfs is a Debian bookworm base with python3 made by debootstrap once and cached
    (DOCKPLUG_ROOTFS_CACHE, default /var/cache/dockplug/rootfs/bookworm-python3)."""
    from dockplug.packaging.bundle import build as build_bundle

    result = build_bundle(driver, name, output)
    kind = "cold, base made" if result.cold else "cached base"
    click.echo(
        f"built {result.path} ({_size(result.size)}, {result.seconds:.1f}s, {kind})", err=True
    )
    if do_create:
        from dockplug.packaging import engine

        engine.create(name, result.path)
        click.echo(f"created {name} (disabled); next: dockplug enable {name}", err=True)
    click.echo(str(result.path))


@click.command()
@click.argument("name")
@click.argument("bundle", type=click.Path(path_type=Path, file_okay=False, exists=True))
def create(name: str, bundle: Path) -> None:
    """Register the bundle folder BUNDLE with dockerd as plugin NAME (disabled)."""
    from dockplug.packaging import engine

    engine.create(name, bundle)
    click.echo(f"created {name} (disabled); next: dockplug enable {name}")


@click.command()
@click.argument("name")
@click.option("--timeout", default=30, show_default=True, help="Seconds dockerd may take.")
def enable(name: str, timeout: int) -> None:
    """Enable plugin NAME, wait for its socket, and run the doctor if it fails."""
    from dockplug.packaging import engine

    res = engine.enable(name, timeout=timeout)
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
