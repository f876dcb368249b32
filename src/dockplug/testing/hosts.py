"""Several Docker hosts on one machine, for the cluster drivers' tests: a :class:`Cluster`.

Each host is a network namespace with one veth to a switch namespace (a bridge), a mount
namespace of its own where its folder is bind-mounted over ``/run/docker/plugins`` (so its
dockerd finds only its own plugins, under their default names; test-environment.md) and /sys
shows its own links, and its own dockerd (own data and exec roots, API socket in its folder) of
the engine ``DOCKPLUG_ENGINE`` selects (bookworm's 20.10, or 28.5 unpacked: the recipe of the
single test dockerd, :mod:`dockplug.testing.engines`). dockerd and the host's plugins are
started in both namespaces with ``nsenter`` (not ``ip netns exec``, whose fresh /sys hides the
cgroup mounts dockerd needs: the holder of the mount namespace moves them onto its sysfs).
etcd runs in a namespace of its own on the same switch,
reachable from every host and from nowhere else: all traffic stays inside the namespaces made
here, on ``SUBNET``. A host's plugin can be killed with SIGKILL and
started again; :meth:`Cluster.stop` removes every process, namespace and folder.

Plugin sockets are plain files in each host's folder: the test process reaches them (and each
dockerd's API socket) from the root namespace, since unix sockets do not belong to a network
namespace.
"""

from __future__ import annotations

import base64
import concurrent.futures
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockplug.errors import ConfigError
from dockplug.facts import PLUGIN_DIR
from dockplug.testing import engines
from dockplug.testing.dockerd import BUSYBOX_IMAGE, Dockerd

SUBNET = "192.168.77"  # the switch's /24, only inside the namespaces made here
ETCD_ADDRESS = f"{SUBNET}.2"
ETCD_PORT = 2379


def unavailable_reason() -> str | None:
    """Why a cluster cannot run here, or None (the engine DOCKPLUG_ENGINE selects is fetched
    when it is not bookworm's)."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and dockerd"
    for tool in ("ip", "nsenter", "unshare", "docker", "busybox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh test installs it)"
    try:
        series = engines.selected()
    except ConfigError as exc:
        return str(exc)
    return engines.unavailable_reason(series)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {res.stderr.strip()}")
    return res


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Host:
    """One Docker host: its namespace, address on the switch, folder, dockerd and plugin."""

    name: str
    netns: str
    address: str
    root: Path
    #: The engine its dockerd runs (DOCKPLUG_ENGINE's; the same recipe as the test dockerd).
    engine: engines.Engine
    dockerd: subprocess.Popen[bytes] | None = None
    plugin: subprocess.Popen[bytes] | None = None
    plugin_args: list[str] = field(default_factory=list)
    mounts: subprocess.Popen[bytes] | None = None
    iface: str = "eth0"  # the host's uplink inside its namespace (macvlan/ipvlan parent)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def plugins(self) -> Path:
        """This host's /run/docker/plugins."""
        return self.root / "plugins"

    def start_mounts(self, timeout: float = 10.0) -> None:
        """This host's mount namespace, kept by a holder process for the host's whole life:
        dockerd's netns bind mounts live there, so they outlive a dockerd restart (live-restore
        needs them) as they would on a real host; /run/docker/plugins is this host's folder.

        /sys is a sysfs of the host's network namespace (with the machine's cgroup mounts moved
        onto it, which dockerd needs), so /sys/class/net shows this host's links as on a real
        host: dockerd 28 reads a bridge's STP and port state there at Join and only sleeps
        20 ms instead when it cannot (libnetwork/osl: "Failed to open port state file")."""
        script = (
            'mount --bind "$0" /run/docker/plugins && mount --rbind /sys/fs/cgroup "$1" && '
            'mount -t sysfs sysfs /sys && mount --move "$1" /sys/fs/cgroup && exec sleep infinity'
        )
        cgroups = self.root / "cgroup"
        cgroups.mkdir(exist_ok=True)
        self.mounts = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}",
             "unshare", "-m", "--propagation", "private", "bash", "-c", script,
             str(self.plugins), str(cgroups)],
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        target = f" {PLUGIN_DIR} "
        while True:
            with contextlib.suppress(OSError):
                info = Path(f"/proc/{self.mounts.pid}/mountinfo").read_text()
                if target in info and Path(f"/proc/{self.mounts.pid}/comm").read_text() == (
                    "sleep\n"
                ):
                    return
            if self.mounts.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the mount namespace did not come up")
            time.sleep(0.02)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """ARGV run in this host: its mount namespace (its own /run/docker/plugins) and its
        network namespace."""
        assert self.mounts is not None, "start_mounts() first"
        return [
            "nsenter", f"--mount=/proc/{self.mounts.pid}/ns/mnt",
            f"--net=/run/netns/{self.netns}", *argv,
        ]  # fmt: skip

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this host's dockerd."""
        res = subprocess.run(
            ["docker", *args],
            env={**os.environ, "DOCKER_HOST": self.docker_host},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"{self.name}: docker {' '.join(args)} failed ({res.returncode}): "
                f"{res.stderr.strip()}"
            )
        return res

    def ns(self, *argv: str, check: bool = True) -> str:
        """ARGV (ip, bridge, iptables, sysctl...) in this host's network namespace; its
        output. The machine's mount namespace: only /sys differs in the host's own."""
        done = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.netns}", *argv],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name}: {' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def firewall_like_dockerd(self, ipv6: bool = False) -> None:
        """FORWARD policy DROP, forwarding and br_netfilter on, as dockerd's default
        ``--iptables=true`` leaves a real host (the hosts' dockerds run without it), and with
        IPV6 the same in ip6tables, as 28's default ``--ip6tables=true`` does: a network
        driver's own forward rules are then what lets traffic through."""
        tools = ("iptables", "ip6tables") if ipv6 else ("iptables",)
        for tool in tools:
            self.ns(tool, "-P", "FORWARD", "DROP")
        self.ns("sysctl", "-qw", "net.ipv4.ip_forward=1")
        if ipv6:
            self.ns("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for tool in tools:  # br_netfilter's knobs exist once the module is loaded
            self.ns("sysctl", "-qw", f"net.bridge.bridge-nf-call-{tool}=1", check=False)

    def run(
        self, *args: str, network: str, name: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``docker run -d`` of a busybox sleeping on NETWORK (ARGS before the image). sleep as
        PID 1 ignores SIGTERM: a 1 s stop timeout keeps removals and dockerd restarts quick."""
        named = ("--name", name) if name else ()
        return self.docker("run", "-d", "--stop-timeout", "1", *named, "--network", network,
                           *args, BUSYBOX_IMAGE, "sleep", "600", check=check)  # fmt: skip

    def ip_of(self, container: str, network: str) -> str:
        """CONTAINER's IPv4 address on NETWORK."""
        fmt = f"{{{{(index .NetworkSettings.Networks {json.dumps(network)}).IPAddress}}}}"
        return self.docker("inspect", "-f", fmt, container).stdout.strip()

    def addresses(self, network: str) -> dict[str, str]:
        """Container name -> IPv4 address on NETWORK of this host's running containers."""
        each = '{{range .Containers}}{{.Name}} {{.IPv4Address}}{{"\\n"}}{{end}}'
        res = self.docker("network", "inspect", network, "--format", each)
        out = {}
        for line in res.stdout.splitlines():
            if line.strip():
                name, cidr = line.split()
                out[name] = cidr.split("/")[0]
        return out

    def pid_of(self, container: str) -> str:
        return self.docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()

    def pings(self, container: str, ip: str, count: int = 1) -> bool:
        """Whether CONTAINER (busybox's ping, 1 s per reply) reaches IP."""
        res = self.docker("exec", container, "ping", "-c", str(count), "-W", "1", ip, check=False)
        return res.returncode == 0

    def net_status(self) -> dict[str, Any]:
        """What this host's ``dockplug serve net`` reports (``DockplugNet.Status``, the
        maintenance endpoint ``dockplug net status`` reads)."""
        from dockplug.client import PluginClient

        with PluginClient(str(self.plugins / "dockplug-net.sock"), timeout=30) as client:
            reply = client.call("DockplugNet.Status")
        assert reply.status == 200, reply.raw
        result: dict[str, Any] = reply.json["Result"]
        return result

    def start_dockerd(self, timeout: float = 60.0) -> None:
        """This host's dockerd, on its engine's binaries and PATH (28 runs its own containerd
        from the unpacked tree with bookworm's runc and tini), reading this host's daemon.json
        (live-restore is switched on there)."""
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - lives with the process
        own = ("--bridge=none", "--iptables=false", "--ip6tables=false")
        self.dockerd = subprocess.Popen(
            self.wrap([
                str(self.engine.dockerd),
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"),
                "-H", self.docker_host,
                *own,
                *(a for a in self.engine.args(self.root / "daemon.json") if a not in own),
            ]),
            env=self.engine.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        fmt = ["version", "--format", "{{.Server.Version}}"]
        while (answer := self.docker(*fmt, check=False, timeout=10)).returncode != 0:
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: dockerd did not start: {self.log_tail()}")
            time.sleep(0.2)
        found = engines.series_of(answer.stdout.strip())
        if found != self.engine.series.name:
            raise RuntimeError(
                f"{self.name}: dockerd {answer.stdout.strip()} answers, not "
                f"{self.engine.series.name} ({self.engine.dockerd})"
            )

    def log_tail(self, name: str = "dockerd.log", lines: int = 20) -> str:
        path = self.root / name
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def serve(self, *args: str, wait: float = 15.0) -> subprocess.Popen[bytes]:
        """Starts ``dockplug serve ARGS`` inside this host (its socket lands in
        :attr:`plugins`); returns once the socket answers. Without ARGS, the last ones."""
        self.plugin_args = list(args) or self.plugin_args
        log = open(self.root / "plugin.log", "ab")  # noqa: SIM115 - lives with the process
        self.plugin = subprocess.Popen(
            self.wrap([sys.executable, "-m", "dockplug", "serve", *self.plugin_args]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        from dockplug.client import PluginClient

        deadline = time.monotonic() + wait
        while True:
            sockets = list(self.plugins.glob("*.sock"))
            if sockets:
                try:
                    with PluginClient(str(sockets[0]), timeout=2) as client:
                        if client.call("Plugin.Activate").status == 200:
                            return self.plugin
                except OSError:
                    pass
            if self.plugin.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name}: plugin did not start: {self.log_tail('plugin.log')}"
                )
            time.sleep(0.05)

    def kill_plugin(self) -> None:
        """SIGKILL: no shutdown, no socket removal (the crash dockerd must ride out)."""
        if self.plugin is not None and self.plugin.poll() is None:
            self.plugin.kill()
            self.plugin.wait()
        for sock in self.plugins.glob("*.sock"):
            sock.unlink()  # a restart binds again (the server refuses a live socket only)

    def stop_plugin(self) -> None:
        _stop(self.plugin)
        self.plugin = None

    def stop_dockerd(self) -> None:
        """SIGTERM and wait: dockerd's own shutdown (containers stop unless live-restore)."""
        _stop(self.dockerd, 40)
        self.dockerd = None

    def stop(self) -> None:
        if self.dockerd is not None and self.dockerd.poll() is None:
            running = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if running:
                self.docker("rm", "-f", *running, check=False, timeout=120)
        _stop(self.dockerd, 40)
        self.dockerd = None
        self.stop_plugin()
        if self.mounts is not None:
            self.mounts.kill()
            self.mounts.wait()
            self.mounts = None


class Cluster:
    """N hosts on one switch, etcd beside them (``etcd_binary``; None: no etcd)."""

    def __init__(self, n: int = 3, etcd_binary: Path | None = None) -> None:
        self.engine = engines.prepare(engines.selected())  # before anything is made
        self.tag = f"dp{uuid.uuid4().hex[:6]}"
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp"))
        self.switch = f"{self.tag}-sw"
        self.etcd_ns = f"{self.tag}-etcd"
        self.etcd_binary = etcd_binary
        self.etcd: subprocess.Popen[bytes] | None = None
        self.hosts = [
            Host(
                f"h{i + 1}", f"{self.tag}-h{i + 1}", f"{SUBNET}.{11 + i}",
                self.root / f"h{i + 1}", self.engine,
            )
            for i in range(n)
        ]  # fmt: skip
        self._namespaces: list[str] = []

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{ETCD_ADDRESS}:{ETCD_PORT}"

    def _netns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _attach(self, netns: str, address: str, port: str) -> None:
        """A veth from the switch's bridge to NETNS, where it is eth0 with ADDRESS."""
        _run("ip", "-n", self.switch, "link", "add", port, "type", "veth",
             "peer", "name", "eth0", "netns", netns)  # fmt: skip
        _run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        _run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")

    def start(self) -> Cluster:
        try:
            self._netns(self.switch)
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts):
                self._netns(host.netns)
                self._attach(host.netns, host.address, f"p{i + 1}")
                for sub in ("plugins", "data", "exec", "state"):
                    (host.root / sub).mkdir(parents=True, exist_ok=True)
                (host.root / "daemon.json").write_text("{}")
                host.start_mounts()
            Path("/run/docker/plugins").mkdir(parents=True, exist_ok=True)
            if self.etcd_binary is not None:
                self._netns(self.etcd_ns)
                self._attach(self.etcd_ns, ETCD_ADDRESS, "pe")
                self.start_etcd()
            with concurrent.futures.ThreadPoolExecutor(len(self.hosts)) as pool:
                list(pool.map(lambda h: h.start_dockerd(), self.hosts))
                list(pool.map(lambda h: Dockerd(host=h.docker_host).busybox_image(), self.hosts))
        except BaseException:
            self.stop()
            raise
        return self

    def in_netns(self, netns: str, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{netns}", *argv]

    def serve_net(self, *extra: str, hosts: Sequence[Host] | None = None) -> None:
        """``dockplug serve net`` on HOSTS (every host by default, at once) on this cluster's
        etcd, named by the host, its state in the host's folder, its leak reclaimer reading the
        host's own dockerd; EXTRA after that. ``Host.serve()`` starts one again with the same
        arguments."""

        def start(h: Host) -> None:
            h.serve("net", "--host-id", h.name, "--etcd", self.etcd_endpoint,
                    "--state-dir", str(h.root / "state"), "--docker-host", h.docker_host,
                    *extra)  # fmt: skip

        chosen = list(self.hosts if hosts is None else hosts)
        with concurrent.futures.ThreadPoolExecutor(max(len(chosen), 1)) as pool:
            list(pool.map(start, chosen))

    def etcd_keys(self, prefix: str) -> list[str]:
        """Every key under PREFIX, read through etcd's JSON gateway from its namespace."""
        key = prefix.encode()
        body = json.dumps({
            "key": base64.b64encode(key).decode(),
            "range_end": base64.b64encode(key[:-1] + bytes([key[-1] + 1])).decode(),
            "keys_only": True,
        })  # fmt: skip
        script = (
            "import sys,urllib.request;"
            f"r=urllib.request.urlopen(urllib.request.Request('{self.etcd_endpoint}/v3/kv/range',"
            "data=sys.stdin.buffer.read(),method='POST'),timeout=5);print(r.read().decode())"
        )
        done = subprocess.run(
            self.in_netns(self.etcd_ns, [sys.executable, "-c", script]),
            input=body, capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
        kvs = json.loads(done.stdout).get("kvs", [])
        return [base64.b64decode(kv["key"]).decode() for kv in kvs]

    def start_etcd(self, timeout: float = 20.0) -> None:
        """etcd on the switch (its data kept across restarts)."""
        assert self.etcd_binary is not None
        url = self.etcd_endpoint
        peer = f"http://127.0.0.1:{ETCD_PORT + 1}"
        log = open(self.root / "etcd.log", "ab")  # noqa: SIM115 - lives with the process
        self.etcd = subprocess.Popen(
            self.in_netns(self.etcd_ns, [
                str(self.etcd_binary), "--name=dp", f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=dp={peer}", "--heartbeat-interval=10",
                "--election-timeout=100", "--logger=zap", "--log-level=warn",
            ]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        probe = (
            "import json,sys,urllib.request;"
            f"r=urllib.request.urlopen('{url}/health',timeout=1);"
            "sys.exit(0 if json.loads(r.read()).get('health') in (True,'true') else 1)"
        )
        deadline = time.monotonic() + timeout
        while True:
            check = subprocess.run(
                self.in_netns(self.etcd_ns, [sys.executable, "-c", probe]), capture_output=True
            )
            if check.returncode == 0:
                return
            if self.etcd.poll() is not None or time.monotonic() > deadline:
                log_text = (self.root / "etcd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"etcd did not start: {log_text}")
            time.sleep(0.1)

    def kill_etcd(self) -> None:
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.kill()
            self.etcd.wait()

    def stop(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(max(len(self.hosts), 1)) as pool:
            list(pool.map(lambda h: _quietly(h.stop), self.hosts))
        _stop(self.etcd)
        for name in reversed(self._namespaces):
            _run("ip", "netns", "del", name, check=False)
        self._namespaces.clear()
        for host in self.hosts:  # what a killed dockerd may leave mounted
            with contextlib.suppress(OSError):
                mounts = Path("/proc/self/mountinfo").read_text().splitlines()
                for line in sorted(mounts, key=len, reverse=True):
                    point = line.split()[4]
                    if point.startswith(str(host.root)):
                        _run("umount", "-l", point, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _quietly(fn: object) -> None:
    with contextlib.suppress(Exception):
        fn()  # type: ignore[operator]


def cluster_or_skip(n: int) -> Cluster:
    """A (not yet entered) Cluster of N hosts on etcd 3.4 for a test module's fixture, or a
    pytest skip naming what this machine lacks (root, tools, etcd)."""
    import pytest

    from dockplug.testing.etcd import find_etcd

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    etcd, why = find_etcd("3.4")
    if etcd is None:
        pytest.skip(why)
    return Cluster(n, etcd_binary=etcd)
