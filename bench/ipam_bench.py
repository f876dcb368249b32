"""dockplug-net benchmark (not a test): RequestAddress through the socket, and ``docker run``.

1. **RequestAddress** rate and p50/p99 latency through each plugin's unix socket, the calls
   dockerd makes for ``docker run`` (one PoolID, ``Address: ""``, the MAC in Options), closed
   loop with ``--conns`` keep-alive connections per plugin, for ``--duration`` seconds:
   one host (one ``dockplug serve net``) and three hosts at once (three plugin processes with
   their own ``--host-id`` on one store, each loaded at the same time), on SQLite (the three
   share one file) and on etcd 3.4 (127.0.0.1). Each call claims a new address with its own
   create-if-absent transaction. With ``--families 4,6`` (the default) each scenario runs on
   an IPv4 /16 and on an IPv6 /64 (``V6: true``), whose addresses are probed from the cursor
   rather than walked.
2. **docker run**: ``docker run --rm --network N IMAGE true`` on a bridge network whose IPAM is
   dockplug-net (SQLite, then etcd) and on one with Docker's default IPAM, interleaved run by
   run on one isolated dockerd; the median of each and its ratio to the default IPAM's network
   of the same family (with 6: dual-stack networks, ``--ipv6`` and a /64, beside them).

Run as root: ``python bench/ipam_bench.py [--duration 5] [--conns 4] [--runs 20]
[--families 4,6] [--json out.json]``. Takes about two minutes with the defaults.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dockplug.client import PluginClient
from dockplug.testing.dockerd import Dockerd
from dockplug.testing.etcd import throwaway_etcd
from dockplug.testing.servers import SubprocessPlugin

MAC = {"com.docker.network.endpoint.macaddress": "02:42:0a:00:00:01"}


@contextmanager
def plugins(
    root: Path, n: int, store: list[str], name: str = "dpbench", socket_dir: Path | None = None
) -> Iterator[list[Path]]:
    """N ``dockplug serve net`` processes (hosts b1..bN) on one store; yields their sockets."""
    started: list[SubprocessPlugin] = []
    sockets: list[Path] = []
    prefix = f"/bench-{uuid.uuid4().hex[:6]}"  # one cluster per call
    try:
        for i in range(n):
            sock = (socket_dir or root) / f"{name}{i if n > 1 else ''}.sock"
            args = [
                "serve", "net", "--name", sock.stem, "--socket", str(sock), "--announce", "none",
                "--host-id", f"b{i + 1}", "--state-dir", str(root / f"state{i}"),
                "--key-prefix", prefix,
                "--docker-host", "unix:///nonexistent/docker.sock", *store,
            ]  # fmt: skip
            if not store:  # SQLite: every process on the same file
                args[args.index("--state-dir") + 1] = str(root / "state")
            started.append(SubprocessPlugin(args, wait_for=sock).start())
            sockets.append(sock)
        yield sockets
    finally:
        for p in started:
            p.stop()


def load(sockets: list[Path], conns: int, duration: float, pool: str) -> dict[str, Any]:
    """Closed-loop RequestAddress on every socket at once; rate and latency percentiles."""
    ask = {"AddressSpace": "LocalDefault", "Pool": pool, "V6": ":" in pool}
    with PluginClient(str(sockets[0]), timeout=30) as c:
        reply = c.call("IpamDriver.RequestPool", ask)
        assert reply.error is None, reply.error
        pool_id = reply.json["PoolID"]
    for sock in sockets[1:]:
        with PluginClient(str(sock), timeout=30) as c:
            c.call("IpamDriver.RequestPool", ask)
    latencies: list[float] = []
    errors: list[str] = []
    got: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(sockets) * conns + 1)
    stop_at = [0.0]

    def worker(sock: Path) -> None:
        mine: list[float] = []
        addrs: list[str] = []
        with PluginClient(str(sock), timeout=30) as c:
            body = {"PoolID": pool_id, "Address": "", "Options": MAC}
            start.wait()
            while time.monotonic() < stop_at[0]:
                t = time.perf_counter()
                reply = c.call("IpamDriver.RequestAddress", body)
                mine.append(time.perf_counter() - t)
                if reply.error:
                    with lock:
                        errors.append(reply.error)
                    break
                addrs.append(reply.json["Address"])
        with lock:
            latencies.extend(mine)
            got.extend(addrs)

    threads = [threading.Thread(target=worker, args=(s,)) for s in sockets for _ in range(conns)]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + duration
    began = time.monotonic()
    start.wait()
    for t in threads:
        t.join()
    took = time.monotonic() - began
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "calls": len(latencies),
        "rate": len(latencies) / took,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "duplicates": len(got) - len(set(got)),
        "errors": errors[:3],
    }


def socket_bench(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    rows = []
    with throwaway_etcd("3.4") as etcd:
        stores = {"SQLite": [], "etcd 3.4": ["--etcd", etcd.endpoint]}
        for label, store in stores.items():
            for n in (1, 3):
                sub = root / f"{label.split()[0]}-{n}"
                sub.mkdir()
                with plugins(sub, n, store) as sockets:
                    for family in args.families:
                        pool = (
                            f"10.{100 + len(rows)}.0.0/16"
                            if family == 4
                            else f"fd00:be{len(rows):02x}::/64"
                        )
                        result = load(sockets, args.conns, args.duration, pool)
                        rows.append({"store": label, "hosts": n, "family": family, **result})
    return rows


def run_bench(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    name = f"dpbench-{uuid.uuid4().hex[:6]}"
    daemon = Dockerd(root / "dockerd").start()
    rows: list[dict[str, Any]] = []
    try:
        image = daemon.busybox_image()
        with throwaway_etcd("3.4") as etcd, plugins(
            root, 1, [], name=name, socket_dir=Path("/run/docker/plugins")
        ), plugins(
            root / "e", 1, ["--etcd", etcd.endpoint], name=name + "e",
            socket_dir=Path("/run/docker/plugins"),
        ):  # fmt: skip
            six = ["--ipv6", "--subnet", "10.213.0.0/24", "--subnet", "fd00:213::/64"]
            nets = {
                "Docker's default IPAM": ["--subnet", "10.210.0.0/24"],
                "dockplug-net (SQLite)": ["--ipam-driver", name, "--subnet", "10.211.0.0/24"],
                "dockplug-net (etcd)": ["--ipam-driver", name + "e", "--subnet", "10.212.0.0/24"],
            }
            if 6 in args.families:
                nets["Docker's default IPAM, dual stack"] = six
                nets["dockplug-net (SQLite), dual stack"] = [
                    "--ipam-driver", name, "--ipv6", "--subnet", "10.214.0.0/24",
                    "--subnet", "fd00:214::/64",
                ]  # fmt: skip
                nets["dockplug-net (etcd), dual stack"] = [
                    "--ipam-driver", name + "e", "--ipv6", "--subnet", "10.215.0.0/24",
                    "--subnet", "fd00:215::/64",
                ]  # fmt: skip
            times: dict[str, list[float]] = {label: [] for label in nets}
            for i, opts in enumerate(nets.values()):
                daemon.docker("network", "create", *opts, f"{name}-{i}")
            for _ in range(args.runs):
                for i, label in enumerate(nets):
                    t = time.perf_counter()
                    daemon.docker("run", "--rm", "--network", f"{name}-{i}", image, "true")
                    times[label].append(time.perf_counter() - t)
            for i in range(len(nets)):
                daemon.docker("network", "rm", f"{name}-{i}")
        for label, values in times.items():
            peer = "Docker's default IPAM" + (", dual stack" if "dual" in label else "")
            median = statistics.median(values)
            base = statistics.median(times[peer])
            rows.append({"network": label, "median_ms": median * 1000, "ratio": median / base})
    finally:
        daemon.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load scenario")
    parser.add_argument("--conns", type=int, default=4, help="connections per plugin")
    parser.add_argument("--runs", type=int, default=20, help="docker runs per network")
    parser.add_argument("--families", default="4,6",
                        help="address families of the pools: 4, 6 or 4,6")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        args.families = sorted({int(f) for f in args.families.split(",")})
    except ValueError:
        parser.error(f"--families {args.families!r}: give 4, 6 or 4,6")
    if not set(args.families) <= {4, 6}:
        parser.error(f"--families {args.families}: give 4, 6 or 4,6")
    root = Path(tempfile.mkdtemp(prefix="dp-ipambench-", dir="/tmp"))
    console = Console()
    try:
        sock_rows = socket_bench(args, root)
        title = f"RequestAddress through the socket ({args.conns} conns per plugin)"
        table = Table("STORE", "HOSTS", "POOL", "REQUESTADDRESS/S", "P50 MS", "P99 MS",
                      "DUPLICATES", title=title)  # fmt: skip
        for r in sock_rows:
            pool = "IPv4 /16" if r["family"] == 4 else "IPv6 /64"
            table.add_row(r["store"], str(r["hosts"]), pool, f"{r['rate']:.0f}",
                          f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                          str(r["duplicates"]))  # fmt: skip
            for e in r["errors"]:
                console.print(f"[red]{r['store']} x{r['hosts']}: {e}[/red]")
        console.print(table)
        run_rows = run_bench(args, root)
        title = f"docker run --rm (bridge), {args.runs} runs each, interleaved"
        table = Table("NETWORK", "DOCKER RUN MEDIAN MS", "RATIO TO DEFAULT IPAM (SAME FAMILY)",
                      title=title)  # fmt: skip
        for r in run_rows:
            table.add_row(r["network"], f"{r['median_ms']:.0f}", f"{r['ratio']:.2f}")
        console.print(table)
        if args.json:
            args.json.write_text(json.dumps({"socket": sock_rows, "run": run_rows}, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
