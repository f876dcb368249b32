"""What one server option costs per request, measured paired so the machine's drift cancels.

``protocol_bench.py`` measures each peer for seconds at a time, one after the other; on a shared
2-core machine two identical servers measured that way differ by 10-16 % (bench/README.md), so
a 5 % question cannot be answered there. This script starts every variant once, keeps them
running, and loads them in short alternating slices (``--slice`` seconds each, the order
rotated every pair so no variant always goes first). Each slice of a variant is compared with
the base's slice next to it, and the figures are the median of those per-pair ratios with a
95 % bootstrap interval. A ``again`` peer (the base's command a second time) is on by default:
its ratios show the bench's own noise, what any other ratio must be read against.

    python bench/paired_bench.py [--pairs 30] [--slice 1] [--conns 1,8]

By default the base is ``dockplug serve local`` and the variant is the same with ``--metrics
unix:...`` (issue 17: metrics on must stay within 5 % of metrics off, throughput and p50).
``--variant NAME=CMD`` replaces the variants (repeatable), ``--base CMD`` the base; commands use
the same ``{python} {socket} {dir} {repo}`` templates as protocol_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol_bench as pb

BASE = (
    "{python} -m dockplug serve local --name bench-paired --socket {socket} "
    "--base-dir {dir}/vols --state-dir {dir}/state --announce none --spec-dir {dir}/spec"
)
DEFAULT_VARIANTS = [f"metrics={BASE} --metrics unix:{{dir}}/metrics.sock"]
CONTROL = "again"
#: what a variant may cost (issue 17): req/s ratio >= 0.95, p50 and CPU ratios <= 1.05
ALLOWED = 0.05
BOOTSTRAP = 4000
SERVER_CPU, CLIENT_CPU = 0, 1


@dataclass
class Figures:
    """One variant's slices in one scenario, index-aligned with the base's."""

    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def interval(ratios: Sequence[float], rng: random.Random) -> tuple[float, float, float]:
    """Median of the per-pair ratios and its 95 % percentile-bootstrap interval."""
    n = len(ratios)
    medians = sorted(statistics.median(rng.choices(ratios, k=n)) for _ in range(BOOTSTRAP))
    return (
        statistics.median(ratios),
        medians[int(0.025 * BOOTSTRAP)],
        medians[int(0.975 * BOOTSTRAP) - 1],
    )


def pin(pid: int, cpu: int) -> None:
    """Every thread of PID onto CPU (threads made later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def parse_variant(spec: str) -> tuple[str, str]:
    name, sep, template = spec.partition("=")
    if not sep or not name or not template or "/" in name or name in ("base", CONTROL):
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=COMMAND with a new plain NAME")
    return name, template


def run(args: argparse.Namespace, console: Console) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="dppaired-"))
    specs = [("base", args.base)]
    if not args.no_control:
        specs.append((CONTROL, args.base))
    specs += args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS]
    peers = [pb.extra_peer(root, f"{name}={template}") for name, template in specs]
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    pb.compile_bytecode(console)
    if args.pin:  # the client on one core, every server on the other: same seat for all
        os.sched_setaffinity(0, {CLIENT_CPU})
    running: list[pb.Started] = []
    rng = random.Random(args.seed)
    results: dict[int, dict[str, Figures]] = {}
    try:
        for peer in peers:
            started = pb.start_peer(peer, "", args.ready_timeout)
            running.append(started)
            pb.create_volume(peer, "")
            if args.pin:
                pin(started.proc.pid, SERVER_CPU)
            console.print(f"{peer.name}: ready in {started.ready_ms:.0f} ms: "
                          f"{' '.join(peer.argv[1:])}")  # fmt: skip
        request = pb.build_request("VolumeDriver.Get", pb.json_body({"Name": pb.VOLUME}))
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            for conns in args.conns:
                figures = results[conns] = {p.name: Figures() for p in peers}
                console.print(f"{conns} connection(s): {args.pairs} rounds of "
                              f"{len(peers)} x {args.slice:g} s")  # fmt: skip
                for peer, started in zip(peers, running, strict=True):  # warm every variant
                    runner.run(pb.run_scenario(peer.socket, started.proc.pid, request, conns,
                                               0.0, args.warmup))  # fmt: skip
                order = list(range(len(peers)))
                for i in range(args.pairs):
                    rng.shuffle(order)  # no variant always first (or always after the base)
                    for k in order:
                        peer, started = peers[k], running[k]
                        sc = runner.run(pb.run_scenario(peer.socket, started.proc.pid, request,
                                                        conns, 0.1, args.slice))  # fmt: skip
                        if sc.errors:
                            raise pb.StartFailed(f"{peer.name}: {sc.error_samples[:2]}")
                        fig = figures[peer.name]
                        fig.rps.append(sc.rps)
                        fig.p50_ms.append(sc.p50_ms)
                        fig.cpu_us.append(sc.server_cpu_us_per_req or float("nan"))
                    if (i + 1) % 10 == 0:
                        console.print(f"  {i + 1}/{args.pairs}")
            for peer, started in zip(peers, running, strict=True):
                if started.proc.poll() is not None:
                    raise pb.StartFailed(f"{peer.name} died (exit {started.proc.returncode})")
    finally:
        for started in running:
            started.stop()
        if args.keep:
            console.print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return report(results, peers, rng, console)


def report(
    results: dict[int, dict[str, Figures]],
    peers: list[pb.Peer],
    rng: random.Random,
    console: Console,
) -> dict[str, object]:
    table = Table(title="each variant / the base, per pair: median [95 % interval]")
    for col in ("variant", "conns", "req/s", "ratio", "p50 ms", "ratio", "CPU µs/req", "ratio"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    out: dict[str, object] = {}
    verdicts: list[str] = []
    for conns, figures in results.items():
        base = figures["base"]
        for peer in peers:
            fig = figures[peer.name]
            cells: list[str] = [peer.name, str(conns)]
            row: dict[str, object] = {}
            for metric in ("rps", "p50_ms", "cpu_us"):
                mine, theirs = getattr(fig, metric), getattr(base, metric)
                med = statistics.median(mine)
                cells.append(f"{med:,.0f}" if metric == "rps" else f"{med:.3f}"
                             if metric == "p50_ms" else f"{med:.1f}")  # fmt: skip
                if peer.name == "base":
                    cells.append("")
                    row[metric] = {"median": med}
                    continue
                ratio = interval([a / b for a, b in zip(mine, theirs, strict=True)], rng)
                cells.append(f"{ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]")
                row[metric] = {"median": med, "ratio": ratio, "values": mine}
                if peer.name != CONTROL:
                    worse = ratio[0] < 1 - ALLOWED if metric == "rps" else ratio[0] > 1 + ALLOWED
                    if metric != "cpu_us" and worse:
                        verdicts.append(f"{peer.name} {metric} on {conns} conn(s): "
                                        f"{ratio[0]:.3f}x the base")  # fmt: skip
            table.add_row(*cells)
            out[f"{peer.name}/{conns}"] = row
    console.print(table)
    if verdicts:
        console.print("[red]over the allowed 5 %[/]: " + "; ".join(verdicts))
    else:
        console.print("[green]every variant within 5 % of the base[/] (req/s and p50 medians)")
    out["verdicts"] = verdicts
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=30, help="rounds over all peers")
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per peer per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per peer, once")
    parser.add_argument("--conns", type=pb.parse_conns, default=[1, 8])
    parser.add_argument("--base", default=BASE, metavar="CMD", help="the base's command")
    parser.add_argument("--variant", action="append", type=parse_variant, metavar="NAME=CMD",
                        help="a variant to compare (repeatable; default: metrics on)")  # fmt: skip
    parser.add_argument("--no-control", action="store_true",
                        help=f"leave out {CONTROL!r} (the base run twice)")  # fmt: skip
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the scheduler place client and servers (default: servers "
                        f"on CPU {SERVER_CPU}, the client on CPU {CLIENT_CPU})")  # fmt: skip
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--ready-timeout", type=float, default=15.0)
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, state)")
    args = parser.parse_args(argv)
    if args.pairs < 3:
        parser.error("--pairs must be at least 3")
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        args.pin = False
    console = Console(width=None if sys.stdout.isatty() else 160)
    out = run(args, console)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=asdict) + "\n")
    return 1 if out["verdicts"] else 0


if __name__ == "__main__":
    sys.exit(main())
