"""dockplug-net's data and control paths beside their peers, measured in one run.

- ``docker run --rm`` on a dockplug-net network vs Docker's built-in bridge driver, on one host
  (interleaved, median of each, as a ratio);
- across two hosts (network namespaces on one switch, see ``dockplug.testing.hosts``): TCP
  throughput (iperf3 from Debian) and ping RTT between two containers over the VXLAN overlay
  vs the same two namespaces over the plain underlay (the physical limit here).

Run as root: ``.venv/bin/python bench/network_bench.py [--runs 15] [--seconds 3]``;
``DOCKPLUG_ENGINE=28`` runs the hosts on dockerd 28.5 instead of 20.10 (testing/hosts.py).
Needs etcd-server, iperf3 and iputils-ping (scripts/setup.sh test).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time

from dockplug.testing.dockerd import BUSYBOX_IMAGE
from dockplug.testing.etcd import find_etcd
from dockplug.testing.hosts import Cluster, Host, unavailable_reason


def timed_run(h: Host, network: str) -> float:
    start = time.perf_counter()
    h.docker("run", "--rm", "--network", network, BUSYBOX_IMAGE, "true")
    return time.perf_counter() - start


def netns_of(h: Host, container: str) -> str:
    return f"/proc/{h.pid_of(container)}/ns/net"


def iperf(server_ns: str, client_ns: str, address: str, seconds: int) -> float:
    """Gbit/s of one TCP stream from CLIENT_NS to ADDRESS (iperf3 -s in SERVER_NS)."""
    server = subprocess.Popen(
        ["nsenter", f"--net={server_ns}", "iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        out = subprocess.run(
            ["nsenter", f"--net={client_ns}", "iperf3", "-c", address, "-t", str(seconds), "-J"],
            capture_output=True, text=True, check=True, timeout=seconds + 30,
        ).stdout  # fmt: skip
    finally:
        server.kill()
        server.wait()
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def rtt(client_ns: str, address: str, count: int = 50) -> float:
    """Average ping RTT in ms (iputils ping)."""
    out = subprocess.run(
        ["nsenter", f"--net={client_ns}", "ping", "-q", "-c", str(count), "-i", "0.02", address],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    assert match, out
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    reason = unavailable_reason()
    etcd, why = find_etcd("3.4")
    for tool in ("iperf3", "ping"):
        if shutil.which(tool) is None:
            reason = reason or f"{tool} is missing (scripts/setup.sh test)"
    if reason or etcd is None:
        sys.exit(f"cannot run: {reason or why}")
    with Cluster(2, etcd_binary=etcd) as c:
        h1, h2 = c.hosts
        c.serve_net()
        for h in c.hosts:
            h.docker("network", "create", "-d", "dockplug-net", "--ipam-driver", "dockplug-net",
                     "--subnet", "10.90.0.0/24", "-o", "dockplug.network=bench", "ov")  # fmt: skip
        h1.docker("network", "create", "-d", "bridge", "--subnet", "10.91.0.0/24", "builtin")
        ours, theirs = [], []
        timed_run(h1, "ov"), timed_run(h1, "builtin")  # warm caches
        for _ in range(args.runs):
            ours.append(timed_run(h1, "ov"))
            theirs.append(timed_run(h1, "builtin"))
        m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
        print(f"docker run --rm (median of {args.runs}, one host):")
        print(f"  dockplug-net {m_ours * 1000:7.1f} ms   built-in bridge {m_theirs * 1000:7.1f} ms"
              f"   ratio {m_ours / m_theirs:.2f}")  # fmt: skip
        for h, name in ((h1, "bench-a"), (h2, "bench-b")):
            h.docker("run", "-d", "--name", name, "--network", "ov", BUSYBOX_IMAGE, "sleep", "600")
        b_ip = h2.ip_of("bench-b", "ov")
        a_ns, b_ns = netns_of(h1, "bench-a"), netns_of(h2, "bench-b")
        u1, u2 = f"/run/netns/{h1.netns}", f"/run/netns/{h2.netns}"
        rtt(a_ns, b_ip, 5)  # FDB/neighbour warm
        over_bw = iperf(b_ns, a_ns, b_ip, args.seconds)
        under_bw = iperf(u2, u1, h2.address, args.seconds)
        over_rtt, under_rtt = rtt(a_ns, b_ip), rtt(u1, h2.address)
        print("across two hosts (one TCP stream, iperf3; ping avg of 50):")
        print(f"  overlay  {over_bw:6.2f} Gbit/s  {over_rtt:.3f} ms")
        print(f"  underlay {under_bw:6.2f} Gbit/s  {under_rtt:.3f} ms   (the physical limit)")
        print(
            f"  overlay/underlay: throughput {over_bw / under_bw:.2f}, "
            f"RTT {over_rtt / under_rtt:.2f}"
        )


if __name__ == "__main__":
    main()
