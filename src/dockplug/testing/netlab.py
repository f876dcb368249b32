"""Several Docker hosts on one machine, for the network driver's tests and bench: a switch
namespace (one bridge), etcd in a namespace of its own on it, and per host a network namespace
with an underlay address, its own dockerd (``--iptables=true``: FORWARD policy DROP, as in
production) and a private ``/run/docker/plugins`` (test-environment.md, "Several hosts").

Every address lives inside namespaces made here; nothing is routed out of them. This is the
network driver's own lab until the shared multi-host fixture (``testing/hosts.py``) lands.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dockplug.testing.dockerd import BUSYBOX_IMAGE, Dockerd


def _sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, dockerd)"
    for tool in ("ip", "dockerd", "docker", "nsenter", "unshare", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh test)"
    return None


def in_netns(netns: str, *cmd: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{netns}", *cmd]


@dataclass
class Host:
    """One Docker host: a network namespace, its dockerd and (when started) its plugin."""

    lab: Lab
    index: int
    netns: str
    address: str
    root: Path
    dockerd_proc: subprocess.Popen[bytes] | None = None
    plugin_proc: subprocess.Popen[bytes] | None = None
    docker_api: Dockerd | None = None

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def _private(self, *cmd: str) -> list[str]:
        """CMD in this host's namespace with its own /run/docker/plugins."""
        plugins = self.root / "plugins"
        script = f"mount --bind {plugins} /run/docker/plugins && exec " + " ".join(
            f"'{c}'" for c in in_netns(self.netns, *cmd)
        )
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]

    def start_dockerd(self, *extra: str) -> None:
        (self.root / "plugins").mkdir(parents=True, exist_ok=True)
        Path("/run/docker/plugins").mkdir(parents=True, exist_ok=True)
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - lives with the process
        self.dockerd_proc = subprocess.Popen(
            self._private(
                "dockerd",
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"),
                "-H", self.host,
                "--bridge=none",
                *extra,
            ),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.docker_api = Dockerd(host=self.host)
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.dockerd_proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"dockerd of {self.name} did not start: {tail}")
            time.sleep(0.2)

    def stop_dockerd(self) -> None:
        if self.dockerd_proc is not None and self.dockerd_proc.poll() is None:
            self.dockerd_proc.send_signal(signal.SIGTERM)
            try:
                self.dockerd_proc.wait(30)
            except subprocess.TimeoutExpired:
                self.dockerd_proc.kill()
                self.dockerd_proc.wait()
        self.dockerd_proc = None

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["docker", *args], env={**os.environ, "DOCKER_HOST": self.host},
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and res.returncode != 0:
            raise AssertionError(f"{self.name}: docker {' '.join(args)}: {res.stderr.strip()}")
        return res

    def image(self) -> str:
        assert self.docker_api is not None
        return self.docker_api.busybox_image()

    def start_plugin(self, *args: str, name: str = "dockplug-net") -> None:
        """``dockplug serve net`` in this host (its socket in the host's plugin folder)."""
        log = open(self.root / "plugin.log", "ab")  # noqa: SIM115 - lives with the process
        cmd = [
            sys.executable, "-m", "dockplug", "serve", "net", "--name", name,
            "--state-dir", str(self.root / "state"), "--host-id", self.name, *args,
        ]  # fmt: skip
        self.plugin_proc = subprocess.Popen(
            self._private(*cmd), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        sock = self.root / "plugins" / f"{name}.sock"
        deadline = time.monotonic() + 20
        while not sock.exists():
            if self.plugin_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"plugin of {self.name} did not start: {self.plugin_log()}")
            time.sleep(0.05)

    def plugin_log(self) -> str:
        path = self.root / "plugin.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill_plugin(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.plugin_proc is not None and self.plugin_proc.poll() is None:
            self.plugin_proc.send_signal(sig)
            self.plugin_proc.wait(30)
        self.plugin_proc = None
        with contextlib.suppress(FileNotFoundError):
            if sig == signal.SIGKILL:
                (self.root / "plugins" / "dockplug-net.sock").unlink()

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """CMD in this host's network namespace."""
        return _sh(*in_netns(self.netns, *cmd), check=check, timeout=timeout)

    def close(self) -> None:
        self.kill_plugin(signal.SIGTERM)
        if self.dockerd_proc is not None:
            self.docker("rm", "-f", *self.containers(), check=False) if self.containers() else None
        self.stop_dockerd()
        with contextlib.suppress(OSError):
            for line in sorted(
                Path("/proc/self/mountinfo").read_text().splitlines(), key=len, reverse=True
            ):
                point = line.split()[4]
                if point.startswith(str(self.root)):
                    _sh("umount", "-l", point, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def containers(self) -> list[str]:
        if self.dockerd_proc is None:
            return []
        return self.docker("ps", "-aq", check=False).stdout.split()


@dataclass
class Lab:
    """``Lab(3).start()``: a switch, etcd and three hosts; ``close()`` removes everything."""

    count: int
    etcd_binary: Path | None = None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    hosts: list[Host] = field(default_factory=list)
    etcd_proc: subprocess.Popen[bytes] | None = None
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dp-lab-", dir="/tmp")))
    subnet_base: str = "192.168.237"

    @property
    def switch(self) -> str:
        return f"dpsw{self.tag}"

    @property
    def etcd_ns(self) -> str:
        return f"dpet{self.tag}"

    @property
    def etcd_address(self) -> str:
        return f"{self.subnet_base}.2"

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{self.etcd_address}:2379"

    def _port(self, netns: str, address: str, name: str) -> None:
        """A veth from the switch into NETNS, with ADDRESS/24 there."""
        outside, inside = f"s{name}", f"u{name}"
        _sh("ip", "netns", "add", netns)
        _sh("ip", "-n", netns, "link", "set", "lo", "up")
        _sh(
            "ip",
            "-n",
            self.switch,
            "link",
            "add",
            outside,
            "type",
            "veth",
            "peer",
            "name",
            inside,
            "netns",
            netns,
        )
        _sh("ip", "-n", self.switch, "link", "set", outside, "master", "br0", "up")
        _sh("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", inside)
        _sh("ip", "-n", netns, "link", "set", inside, "up")

    def start(self, dockerd_args: tuple[str, ...] = ()) -> Lab:
        _sh("ip", "netns", "add", self.switch)
        _sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        if self.etcd_binary is not None:
            self._port(self.etcd_ns, self.etcd_address, f"e{self.tag}")
            self.start_etcd()
        for i in range(1, self.count + 1):
            netns = f"dph{self.tag}{i}"
            address = f"{self.subnet_base}.{10 + i}"
            self._port(netns, address, f"h{self.tag}{i}")
            _sh(*in_netns(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
            host = Host(self, i, netns, address, self.root / f"h{i}")
            host.root.mkdir(parents=True)
            self.hosts.append(host)
            host.start_dockerd(*dockerd_args)
        return self

    # -- etcd ----------------------------------------------------------------------------------

    def start_etcd(self) -> None:
        assert self.etcd_binary is not None
        data = self.root / "etcd"
        data.mkdir(exist_ok=True)
        peer = f"http://{self.etcd_address}:2380"
        log = open(self.root / "etcd.log", "ab")  # noqa: SIM115 - lives with the process
        self.etcd_proc = subprocess.Popen(
            in_netns(
                self.etcd_ns, str(self.etcd_binary), "--name=dp", f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_endpoint}",
                f"--advertise-client-urls={self.etcd_endpoint}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=dp={peer}", "--heartbeat-interval=50",
                "--election-timeout=500", "--logger=zap", "--log-level=warn",
            ),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not self.etcd_healthy():
            if self.etcd_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("etcd did not start: " + (self.root / "etcd.log").read_text())
            time.sleep(0.1)

    def _etcd_call(self, path: str, body: dict[str, str]) -> dict[str, object]:
        """One call of etcd's JSON gateway, from the etcd namespace."""
        script = (
            "import sys,urllib.request;"
            f"r=urllib.request.urlopen(urllib.request.Request('{self.etcd_endpoint}{path}',"
            "data=sys.stdin.buffer.read(),method='POST'),timeout=2);"
            "sys.stdout.write(r.read().decode())"
        )
        done = subprocess.run(
            in_netns(self.etcd_ns, sys.executable, "-c", script),
            input=json.dumps(body), capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-300:])
        result: dict[str, object] = json.loads(done.stdout or "{}")
        return result

    def etcd_healthy(self) -> bool:
        try:
            self._etcd_call("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
        except (RuntimeError, subprocess.TimeoutExpired, ValueError):
            return False
        return True

    def etcd_keys(self, prefix: str) -> list[str]:
        """Every key under PREFIX (read through etcd's JSON gateway)."""
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        reply = self._etcd_call(
            "/v3/kv/range",
            {"key": base64.b64encode(key).decode(), "range_end": base64.b64encode(end).decode(),
             "keys_only": True},  # type: ignore[dict-item]
        )  # fmt: skip
        kvs = reply.get("kvs") or []
        return [base64.b64decode(kv["key"]).decode() for kv in kvs]  # type: ignore[attr-defined]

    def stop_etcd(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.etcd_proc is not None and self.etcd_proc.poll() is None:
            self.etcd_proc.send_signal(sig)
            self.etcd_proc.wait(20)
        self.etcd_proc = None

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.close()
        self.stop_etcd()
        for host in self.hosts:
            _sh("ip", "netns", "del", host.netns, check=False)
        _sh("ip", "netns", "del", self.etcd_ns, check=False)
        _sh("ip", "netns", "del", self.switch, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BUSYBOX_IMAGE", "Host", "Lab", "unavailable_reason"]
