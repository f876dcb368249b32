"""sshfs volume benchmark beside rclone's docker plugin on an sftp remote (not a test).

One throwaway sshd on 127.0.0.1 serves both peers in the same run. Through each plugin's socket
(the calls dockerd makes): first Mount latency (the FUSE mount is made), shared Mount latency
(a second mount ID on a mounted volume), last Unmount; then sequential write and read of a file
through the mountpoint. Run as root: ``python bench/sshfs_bench.py [--rounds 5] [--mib 64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dockplug.client import PluginClient
from dockplug.testing.servers import SubprocessPlugin
from dockplug.testing.sshd import Sshd, throwaway_sshd

CHUNK = 1 << 20


@dataclass
class Figures:
    peer: str
    first_mount_ms: list[float] = field(default_factory=list)
    shared_mount_ms: list[float] = field(default_factory=list)
    last_unmount_ms: list[float] = field(default_factory=list)
    write_mib_s: float = 0.0
    read_mib_s: float = 0.0
    error: str = ""


def _ok(client: PluginClient, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = client.call(endpoint, body)
    if reply.error:
        raise RuntimeError(f"{endpoint}: {reply.error}")
    data = reply.json
    return data if isinstance(data, dict) else {}


def _timed(
    client: PluginClient, endpoint: str, body: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    data = _ok(client, endpoint, body)
    return (time.perf_counter() - t0) * 1000, data


def measure(
    peer: str, client: PluginClient, opts: dict[str, str], folder: Path, sshd: Sshd, rounds: int,
    mib: int,
) -> Figures:  # fmt: skip
    fig = Figures(peer)
    for i in range(rounds):
        name = f"b{i}-{os.getpid()}"
        _ok(client, "VolumeDriver.Create", {"Name": name, "Opts": opts})
        ms, _ = _timed(client, "VolumeDriver.Mount", {"Name": name, "ID": "a" * 64})
        fig.first_mount_ms.append(ms)
        ms, _ = _timed(client, "VolumeDriver.Mount", {"Name": name, "ID": "b" * 64})
        fig.shared_mount_ms.append(ms)
        _ok(client, "VolumeDriver.Unmount", {"Name": name, "ID": "b" * 64})
        ms, _ = _timed(client, "VolumeDriver.Unmount", {"Name": name, "ID": "a" * 64})
        fig.last_unmount_ms.append(ms)
        _ok(client, "VolumeDriver.Remove", {"Name": name})
    block = os.urandom(CHUNK)
    # a file made on the server side before mounting, so nothing of it is in a client cache
    remote = folder / f"r-{peer.replace(' ', '-')}"
    with open(remote, "wb") as fh:
        for _ in range(mib):
            fh.write(block)
    shutil.chown(remote, sshd.user, sshd.user)
    name = f"io-{os.getpid()}"
    _ok(client, "VolumeDriver.Create", {"Name": name, "Opts": opts})
    mountpoint = Path(
        _ok(client, "VolumeDriver.Mount", {"Name": name, "ID": "c" * 64})["Mountpoint"]
    )
    block = os.urandom(CHUNK)
    t0 = time.perf_counter()
    with open(mountpoint / f"w-{peer.replace(' ', '-')}", "wb") as fh:
        for _ in range(mib):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    fig.write_mib_s = mib / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with open(mountpoint / remote.name, "rb") as fh:
        while fh.read(CHUNK):
            pass
    fig.read_mib_s = mib / (time.perf_counter() - t0)
    _ok(client, "VolumeDriver.Unmount", {"Name": name, "ID": "c" * 64})
    _ok(client, "VolumeDriver.Remove", {"Name": name})
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    console = Console()
    results: list[Figures] = []
    root = Path(tempfile.mkdtemp(prefix="dp-sshb-", dir="/tmp"))
    try:
        with throwaway_sshd() as sshd:
            peers: list[tuple[str, list[str], list[str], dict[str, str], Path]] = []
            dp_folder = sshd.folder("dockplug")
            dp_sock = root / "dp.sock"
            peers.append((
                "dockplug sshfs", [],
                ["serve", "sshfs", "--name", "bench-sshfs", "--socket", str(dp_sock),
                 "--announce", "none", "--spec-dir", str(root), "--base-dir", str(root / "dpv"),
                 "--state-dir", str(root / "dps")],
                {"sshcmd": sshd.sshcmd(dp_folder), "port": str(sshd.port),
                 "identity_file": str(sshd.user_key), "host_key": sshd.host_key_pub},
                dp_sock,
            ))  # fmt: skip
            rclone = shutil.which("rclone")
            if rclone:
                rc_folder = sshd.folder("rclone")
                rc_sock = root / "rc.sock"
                (root / "rclone.conf").touch()
                peers.append((
                    "rclone sftp",
                    [rclone, "serve", "docker", "--base-dir", str(root / "rcv"), "--socket-addr",
                     str(rc_sock), "--config", str(root / "rclone.conf"), "--cache-dir",
                     str(root / "rcc")],
                    [],
                    {"type": "sftp", "sftp-host": "127.0.0.1", "sftp-port": str(sshd.port),
                     "sftp-user": sshd.user, "sftp-key-file": str(sshd.user_key),
                     "path": str(rc_folder)},
                    rc_sock,
                ))  # fmt: skip
            else:
                console.print("[yellow]rclone not installed: only dockplug measured[/]")
            for peer, cmd, args_, opts, sock in peers:
                folder = Path(opts.get("path") or opts["sshcmd"].split(":", 1)[1])
                plugin = SubprocessPlugin(args_, wait_for=sock, cmd=cmd or None).start()
                try:
                    with PluginClient(str(sock), timeout=120) as client:
                        results.append(
                            measure(peer, client, opts, folder, sshd, args.rounds, args.mib)
                        )
                except Exception as exc:
                    results.append(Figures(peer, error=str(exc)))
                finally:
                    plugin.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    table = Table("peer", "first mount ms", "shared mount ms", "last unmount ms",
                  "write MiB/s", "read MiB/s", title="sshfs volumes, median of rounds")  # fmt: skip
    for r in results:
        if r.error:
            table.add_row(r.peer, f"[red]{r.error}[/]", "", "", "", "")
            continue
        med = statistics.median
        table.add_row(
            r.peer,
            f"{med(r.first_mount_ms):.0f}",
            f"{med(r.shared_mount_ms):.2f}",
            f"{med(r.last_unmount_ms):.1f}",
            f"{r.write_mib_s:.0f}",
            f"{r.read_mib_s:.0f}",
        )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
