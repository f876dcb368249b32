"""Log-driver benchmark through a real dockerd (not a test): dockplug-logs beside dockerd's
built-in ``json-file`` and ``local`` drivers, in the same run, against the same isolated dockerd.

* write: a container prints N lines (default 1,000,000) of 100 bytes (busybox ``awk``); time
  from ``docker run -d`` to ``docker wait``; lines/s and MB/s (target: dockplug-logs >= 0.9x
  json-file, the median of the ratios within each round; each round runs the drivers in
  another order);
* read: ``docker logs --tail 100`` and a full ``docker logs`` of those lines, vs ``local``;
* the plugin's RSS (VmHWM, the peak) under that load.

Run as root: ``python bench/log_bench.py [--lines 1000000] [--rounds 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dockplug.testing.dockerd import Dockerd
from dockplug.testing.servers import SubprocessPlugin

TARGET_WRITE_RATIO = 0.9
LINE = 100  # bytes per line, newline included


def _script(lines: int) -> str:
    pad = "x" * (LINE - 9)
    return f"awk 'BEGIN {{ for (i = 1; i <= {lines}; i++) printf \"%08d {pad}\\n\", i }}'"


def _timed(dockerd: Dockerd, *args: str) -> tuple[float, str]:
    began = time.monotonic()
    res = subprocess.run(["docker", *args], env=dockerd.env, capture_output=True, text=True,
                         check=True, timeout=1800)  # fmt: skip
    return time.monotonic() - began, res.stdout


def _rss_peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_one(
    dockerd: Dockerd, image: str, driver: str, lines: int, opts: list[str]
) -> dict[str, Any]:
    name = f"dplb-{uuid.uuid4().hex[:8]}"
    began = time.monotonic()
    dockerd.docker("run", "-d", "--name", name, "--log-driver", driver, *opts, image,
                   "sh", "-c", _script(lines))  # fmt: skip
    dockerd.docker("wait", name, timeout=1800)
    wrote = time.monotonic() - began
    tail, out = _timed(dockerd, "logs", "--tail", "100", name)
    assert len(out.splitlines()) == 100, f"{driver}: --tail 100 gave {len(out.splitlines())}"
    full, out = _timed(dockerd, "logs", name)
    got = out.count("\n")
    dockerd.docker("rm", "-f", name)
    return {"driver": driver, "write_s": wrote, "lines_per_s": lines / wrote,
            "mb_per_s": lines * LINE / wrote / 1e6, "tail_ms": tail * 1000, "full_s": full,
            "lines_back": got}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    dockerd = Dockerd().start()
    root = Path(tempfile.mkdtemp(prefix="dplb-", dir="/tmp"))
    name = f"dplb-{uuid.uuid4().hex[:6]}"
    sock = Path(f"/run/docker/plugins/{name}.sock")
    plugin = SubprocessPlugin(["serve", "logs", "--name", name, "--state-dir", str(root / "st")],
                              wait_for=sock).start()  # fmt: skip
    results: list[dict[str, Any]] = []
    try:
        image = dockerd.busybox_image()
        drivers = [("json-file", []), ("local", []), (name, ["--log-opt", "max-size=1g"])]
        for i in range(args.rounds):
            # interleaved, and each round in another order, so machine noise (and whatever
            # runs first or last) hits every driver alike
            for driver, opts in drivers[i % 3 :] + drivers[: i % 3]:
                result = run_one(dockerd, image, driver, args.lines, opts)
                result["round"] = i
                if driver == name:
                    result["driver"] = "dockplug-logs"
                    result["rss_peak_mb"] = _rss_peak(plugin.pid) / 2**20
                results.append(result)
    finally:
        plugin.stop()
        sock.unlink(missing_ok=True)
        dockerd.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    summary = {}
    for driver in ("json-file", "local", "dockplug-logs"):
        rows = [r for r in results if r["driver"] == driver]
        summary[driver] = {k: statistics.median(r[k] for r in rows) for k in rows[0]
                           if k not in ("driver", "round")}  # fmt: skip
    # the ratio within each round (the same minutes of machine noise), then their median
    rate = {(r["round"], r["driver"]): r["lines_per_s"] for r in results}
    paired = [rate[i, "dockplug-logs"] / rate[i, "json-file"] for i in range(args.rounds)]
    ratio = statistics.median(paired)
    table = Table(title=f"{args.lines:,} lines of {LINE} bytes, median of {args.rounds} rounds")
    for col in ("driver", "lines/s", "MB/s", "logs --tail 100", "full logs", "lines back",
                "RSS peak"):  # fmt: skip
        table.add_column(col)
    for driver, s in summary.items():
        table.add_row(driver, f"{s['lines_per_s']:,.0f}", f"{s['mb_per_s']:.1f}",
                      f"{s['tail_ms']:.0f} ms", f"{s['full_s']:.2f} s", f"{s['lines_back']:,.0f}",
                      f"{s['rss_peak_mb']:.0f} MiB" if "rss_peak_mb" in s else "")  # fmt: skip
    console = Console()
    console.print(table)
    verdict = "ok" if ratio >= TARGET_WRITE_RATIO else "BELOW TARGET"
    rounds = " ".join(f"{x:.2f}" for x in paired)
    console.print(f"write rate vs json-file, per round: {rounds}; median {ratio:.2f}x (target "
                  f">= {TARGET_WRITE_RATIO}): {verdict}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rounds": results,
                                         "write_ratio": ratio, "paired": paired},
                                        indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
