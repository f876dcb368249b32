"""``dockplug record``: see exactly what dockerd sends a plugin, and what it answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import click

from dockplug.errors import ConfigError


def _line(ex: dict[str, Any]) -> str:
    body = ex["body"].strip()
    if "error" in ex:
        answer = f"!! {ex['error']}"
    else:
        answer = f"{ex['status']} {ex['reply_body'].strip()[:100]}"
    return f"{ex['t']:9.3f} #{ex['conn']} {ex['path']} {body[:100]} -> {answer}"


@click.command()
@click.option("--name", required=True, help="The plugin name dockerd will use (-d NAME).")
@click.option(
    "--target",
    required=True,
    metavar="TARGET",
    help="The real plugin: a socket path, a URL (unix://, tcp://, https://) or a plugin name.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("recording.json"),
    show_default=True,
    help="The JSON recording, rewritten after every connection and at exit.",
)
@click.option(
    "--socket",
    "listen",
    type=click.Path(path_type=Path),
    help="Listen here instead of /run/docker/plugins/NAME.sock.",
)
@click.option(
    "--pid",
    "pids",
    type=int,
    multiple=True,
    help="Record only calls from this process, e.g. one dockerd among several (repeatable); "
    "every dockerd on the host activates every plugin socket it finds.",
)
@click.option("-q", "--quiet", is_flag=True, help="Do not print one line per call.")
def record(
    name: str, target: str, output: Path, listen: Path | None, pids: tuple[int, ...], quiet: bool
) -> None:
    """Stand in front of a plugin as NAME and record every call dockerd makes to it.

    Each request is forwarded byte for byte: method, path, all headers as sent, the raw body,
    then the plugin's reply, with timing. Stop with Ctrl-C; the recording is in OUTPUT.

    \b
      dockplug record --name rec --target /run/my-plugin.sock -o calls.json
      docker volume create -d rec v1     # in another shell
    """
    from dockplug.client import resolve
    from dockplug.conformance.engine import detect as detect_engine
    from dockplug.conformance.recorder import Recorder
    from dockplug.server.discovery import SOCKET_DIR

    address = resolve(target)
    sock = listen or SOCKET_DIR / f"{name}.sock"
    if sock.resolve() == Path(address.url.partition("unix://")[2] or "/nonexistent").resolve():
        raise ConfigError(f"--target {target} is the socket the recorder would listen on ({sock})")
    recorder = Recorder(sock, address, output, pids=set(pids) or None)
    # before serving: never ask the Engine API while dockerd waits for the plugin
    engine, why = detect_engine()
    recorder.engine = engine.to_json() if engine else None
    click.echo(f"engine: {engine.describe() if engine else 'unknown: ' + why}", err=True)
    if not quiet:
        recorder.on_exchange = lambda ex: click.echo(_line(ex))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(recorder.serve(stop))
        while not recorder.ready.is_set() and not task.done():
            await asyncio.sleep(0.01)
        if not task.done():
            click.echo(f"recording {sock} -> {address.url} into {output}", err=True)
        await task

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    recorder.save()
    n = len(recorder.exchanges)
    click.echo(f"{n} calls recorded in {output}", err=True)
    if not quiet and n:
        paths = [ex["path"] for ex in recorder.exchanges]
        click.echo(json.dumps(sorted(set(paths))), err=True)
