"""End-to-end volume benchmark through a real dockerd (not a test).

For each driver — dockerd's builtin ``local``, ``dockplug serve local`` and ``rclone serve
docker`` (type=local) — in the same run, against the same isolated dockerd, interleaved round by
round:

* volume ops: create + inspect + rm of N volumes (default 200) through the Engine API on one
  keep-alive connection; reported as ms per operation (3N operations) and as a ratio to builtin;
* container runs: ``docker run --rm -v VOL:/data IMAGE true`` M times (default 20), ms per run.

Run as root: ``python bench/e2e_bench.py [--volumes 200] [--runs 20] [--nopoll] [--json out.json]``
(``--nopoll`` adds dockplug with its busy poll off, ``--busy-poll-us 0``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from rich.console import Console
from rich.table import Table

from dockplug.testing.dockerd import Dockerd
from dockplug.testing.servers import SubprocessPlugin

TARGET_VOLUME_RATIO = 2.0
TARGET_RUN_RATIO = 1.05


@dataclass
class Result:
    driver: str
    volume_op_ms: float = 0.0
    run_ms: float = 0.0
    run_ms_p50: float = 0.0
    errors: list[str] = field(default_factory=list)


@dataclass
class Driver:
    label: str
    name: str
    opts: dict[str, str]
    result: Result = field(init=False)
    op_seconds: float = 0.0
    run_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.result = Result(self.label)


def bench(
    api: docker.APIClient, drivers: list[Driver], image: str, volumes: int, runs: int
) -> None:
    """Interleaves the drivers in small rounds, so that drift in the machine's speed (other
    load, page cache, dockerd's own state) hits every driver alike."""
    prefix = f"e2e-{uuid.uuid4().hex[:6]}"
    for d in drivers:  # warm-up: activation, capabilities, connection
        api.create_volume(f"{prefix}-{d.name}-warm", driver=d.name, driver_opts=d.opts or None)
        api.inspect_volume(f"{prefix}-{d.name}-warm")
    chunk = 10
    for first in range(0, volumes, chunk):
        for d in drivers:
            names = [f"{prefix}-{d.name}-{i}" for i in range(first, min(first + chunk, volumes))]
            started = time.perf_counter()
            for name in names:
                api.create_volume(name, driver=d.name, driver_opts=d.opts or None)
                api.inspect_volume(name)
                api.remove_volume(name)
            d.op_seconds += time.perf_counter() - started
    for _ in range(runs):
        for d in drivers:
            vol = f"{prefix}-{d.name}-warm"
            t0 = time.perf_counter()
            ctr = api.create_container(
                image, ["true"], host_config=api.create_host_config(binds=[f"{vol}:/data"])
            )
            api.start(ctr)
            status = api.wait(ctr)
            api.remove_container(ctr)
            d.run_ms.append((time.perf_counter() - t0) * 1000)
            if status.get("StatusCode") != 0:
                d.result.errors.append(f"container exited {status}")
    for d in drivers:
        api.remove_volume(f"{prefix}-{d.name}-warm")
        d.result.volume_op_ms = d.op_seconds * 1000 / (3 * volumes)
        d.result.run_ms = statistics.fmean(d.run_ms)
        d.result.run_ms_p50 = statistics.median(d.run_ms)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--nopoll", action="store_true",
                        help="also dockplug with --busy-poll-us 0, in the same rounds")  # fmt: skip
    args = parser.parse_args()
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="dp-e2e-", dir="/tmp"))
    daemon = Dockerd(root / "dockerd").start()
    tag = uuid.uuid4().hex[:6]
    plugins: list[SubprocessPlugin] = []
    results: list[Result] = []
    try:
        image = daemon.busybox_image()
        api = docker.APIClient(base_url=daemon.host, timeout=300)
        console.print(f"dockerd {daemon.version}, {args.volumes} volumes, {args.runs} runs")

        drivers = [Driver("local", "local", {})]

        variants = [("dockplug local", f"dpbench-{tag}", [])]
        if args.nopoll:
            variants.append(("dockplug local, --busy-poll-us 0", f"dpnopoll-{tag}",
                             ["--busy-poll-us", "0"]))  # fmt: skip
        for label, name, extra in variants:
            plugins.append(
                SubprocessPlugin(
                    ["serve", "local", "--name", name, "--base-dir", str(root / f"{name}-vols"),
                     "--state-dir", str(root / f"{name}-state"), *extra],
                    wait_for=Path(f"/run/docker/plugins/{name}.sock"),
                ).start()
            )  # fmt: skip
            drivers.append(Driver(label, name, {}))

        rclone = shutil.which("rclone")
        if rclone:
            rname = f"rcbench-{tag}"
            rsock = Path(f"/run/docker/plugins/{rname}.sock")
            (root / "rc").mkdir()
            (root / "rc" / "rclone.conf").touch()
            (root / "rc" / "data").mkdir()
            plugins.append(
                SubprocessPlugin(
                    [],
                    cmd=[rclone, "serve", "docker", "--base-dir", str(root / "rc" / "vols"),
                         "--socket-addr", str(rsock), "--config", str(root / "rc/rclone.conf"),
                         "--cache-dir", str(root / "rc" / "cache")],
                    wait_for=rsock,
                ).start()
            )  # fmt: skip
            opts = {"type": "local", "path": str(root / "rc" / "data")}
            drivers.append(Driver("rclone serve docker", rname, opts))
        else:
            console.print("[yellow]rclone not installed: skipped[/]")
        bench(api, drivers, image, args.volumes, args.runs)
        results = [d.result for d in drivers]
        api.close()
    finally:
        for plugin in plugins:
            plugin.stop(signal.SIGTERM)
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)

    base = results[0]
    table = Table("driver", "volume op ms", "x builtin", "docker run ms (mean)", "p50",
                  "x builtin", "errors", title="end to end through dockerd")  # fmt: skip
    for r in results:
        table.add_row(
            r.driver,
            f"{r.volume_op_ms:.2f}",
            f"{r.volume_op_ms / base.volume_op_ms:.2f}",
            f"{r.run_ms:.0f}",
            f"{r.run_ms_p50:.0f}",
            f"{r.run_ms / base.run_ms:.2f}",
            str(len(r.errors)),
        )
    console.print(table)
    console.print(
        f"targets: volume ops <= {TARGET_VOLUME_RATIO}x builtin, container runs <= "
        f"{TARGET_RUN_RATIO}x builtin, ahead of rclone on both"
    )
    if args.json:
        payload: list[dict[str, Any]] = [r.__dict__ for r in results]
        args.json.write_text(json.dumps(payload, indent=2))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
