"""Latency the authorization plugin adds to Engine API calls, beside a dockerd without it in the
same run, and decisions/s of the policy engine alone. A benchmark, not a test.

    sudo python bench/authz_bench.py [--calls 300] [--runs 30] [--policy examples/authz/safe]

Two isolated dockerds are started: one plain, one with ``--authorization-plugin`` and
``dockplug serve authz --policy POLICY`` (audit log on). Each is driven over its unix socket
with the requests the docker CLI sends: ``GET /containers/json`` (``docker ps``) CALLS times,
and ``docker run --rm IMAGE true`` as create + start + wait + delete, RUNS times.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from dockplug.drivers.authz.model import build
from dockplug.drivers.authz.policy import load
from dockplug.protocol.authz import AuthzRequest
from dockplug.testing.dockerd import Dockerd
from dockplug.testing.servers import SubprocessPlugin


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.unix = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix)


def call(conn: UnixHTTP, method: str, path: str, body: object = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers=headers)
    reply = conn.getresponse()
    return reply.status, reply.read()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def drive(daemons: dict[str, tuple[Dockerd, str, str]], calls: int, runs: int
          ) -> dict[str, dict[str, list[float]]]:  # fmt: skip
    """Alternates between the daemons call by call, so drift on a shared machine hits both."""
    conns = {k: UnixHTTP(d.host.removeprefix("unix://")) for k, (d, _, _) in daemons.items()}
    out: dict[str, dict[str, list[float]]] = {k: {"ps": [], "run": []} for k in daemons}
    for k, (_, api, _) in daemons.items():
        for _ in range(20):
            call(conns[k], "GET", f"{api}/containers/json")
    for _ in range(calls):
        for k, (_, api, _) in daemons.items():
            t = time.perf_counter()
            status, _ = call(conns[k], "GET", f"{api}/containers/json")
            out[k]["ps"].append(time.perf_counter() - t)
            assert status == 200, status
    for _ in range(runs):
        for k, (_, api, image) in daemons.items():
            body = {"Image": image, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}
            t = time.perf_counter()
            status, data = call(conns[k], "POST", f"{api}/containers/create", body)
            assert status == 201, data
            cid = json.loads(data)["Id"]
            call(conns[k], "POST", f"{api}/containers/{cid}/start")
            call(conns[k], "POST", f"{api}/containers/{cid}/wait")
            call(conns[k], "DELETE", f"{api}/containers/{cid}?force=1")
            out[k]["run"].append(time.perf_counter() - t)
    for c in conns.values():
        c.close()
    return out


def engine_rate(policy_dir: Path, seconds: float) -> dict[str, float]:
    policy = load(policy_dir)
    body = {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"Binds": ["/srv/a:/a"]}}
    reqs = {
        "GET containers/json": {"RequestMethod": "GET", "RequestUri": "/v1.41/containers/json"},
        "POST containers/create": {
            "RequestMethod": "POST",
            "RequestUri": "/v1.41/containers/create",
            "RequestHeaders": {"Content-Type": "application/json"},
            "RequestBody": base64.b64encode(json.dumps(body).encode()).decode(),
        },
    }
    out = {}
    for what, data in reqs.items():
        req = AuthzRequest.model_validate(data)
        modelled = build(req, "local")
        scenarios: tuple[tuple[str, Callable[[], object]], ...] = (
            ("decide", lambda m=modelled: policy.decide(m)),  # type: ignore[misc]
            ("model+decide", lambda r=req: policy.decide(build(r, "local"))),  # type: ignore[misc]
        )
        for label, fn in scenarios:
            n, end = 0, time.perf_counter() + seconds
            while time.perf_counter() < end:
                fn()
                n += 1
            out[f"{what}: {label}"] = n / seconds
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=2.0, help="per engine-only scenario")
    ap.add_argument("--policy", type=Path, default=Path("examples/authz/safe"))
    args = ap.parse_args()
    name = f"dpzb-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="dpzb-"))
    plugin = SubprocessPlugin(["serve", "authz", "--name", name, "--policy", str(args.policy),
                               "--audit-log", str(tmp / "audit.log")],
                              wait_for=f"/run/docker/plugins/{name}.sock").start()  # fmt: skip
    plain, guarded = Dockerd(), Dockerd()
    results: dict[str, dict[str, list[float]]] = {}
    try:
        plain.start()
        guarded.start(extra_args=(f"--authorization-plugin={name}",))
        daemons = {}
        for label, daemon in (("without plugin", plain), ("with dockplug-authz", guarded)):
            image = daemon.busybox_image()
            version = daemon.docker("version", "--format", "{{.Server.APIVersion}}").stdout
            daemons[label] = (daemon, "/v" + version.strip(), image)
        results = drive(daemons, args.calls, args.runs)
    finally:
        plain.stop()
        guarded.stop()
        plugin.stop()
        Path(f"/run/docker/plugins/{name}.sock").unlink(missing_ok=True)
    print(f"{'':24} {'docker ps p50':>14} {'p99':>8} {'docker run p50':>15} {'p99':>8}  (ms)")
    for label, r in results.items():
        print(f"{label:24} {pct(r['ps'], .5):14.2f} {pct(r['ps'], .99):8.2f} "
              f"{pct(r['run'], .5):15.1f} {pct(r['run'], .99):8.1f}")  # fmt: skip
    base, auth = results["without plugin"], results["with dockplug-authz"]
    print(f"{'added':24} {pct(auth['ps'], .5) - pct(base['ps'], .5):14.2f} {'':8} "
          f"{pct(auth['run'], .5) - pct(base['run'], .5):15.1f}   "
          f"(run = create+start+wait+delete: 4 decisions)")  # fmt: skip
    print(f"mean ps: {statistics.mean(base['ps']) * 1000:.2f} vs "
          f"{statistics.mean(auth['ps']) * 1000:.2f} ms")  # fmt: skip
    print("\npolicy engine alone (one core):")
    for what, rate in engine_rate(args.policy, args.seconds).items():
        print(f"  {what:40} {rate:8.0f} /s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
