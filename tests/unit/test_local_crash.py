"""``dockplug serve local`` as a real process, killed with SIGKILL in the middle of a workload
(issue 3, State): after a restart no acknowledged volume is lost, none is half-made, data written
into volumes is still there and every mount count is what the acknowledged calls made it."""

from __future__ import annotations

import http.client
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dockplug.client import PluginClient
from dockplug.testing.servers import SubprocessPlugin

THREADS = 4


@dataclass
class Vol:
    """What the client knows about one volume from the calls the plugin acknowledged."""

    name: str
    state: str = (
        "creating"  # creating | present | removing | removed (creating/removing: in flight)
    )
    mounts: Counter[str] = field(default_factory=Counter)
    pending: tuple[str, str] | None = None  # ("mount" | "unmount", ID) in flight
    files: dict[str, bytes] = field(default_factory=dict)


class Plugin:
    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.sock = root / "local.sock"
        self.base = root / "base"
        self.state = root / "state"
        self.proc: SubprocessPlugin | None = None

    def start(self) -> SubprocessPlugin:
        self.proc = SubprocessPlugin(
            [
                "serve", "local", "--name", self.name, "--socket", str(self.sock),
                "--base-dir", str(self.base), "--state-dir", str(self.state), "--announce", "none",
            ],
            wait_for=self.sock,
        ).start()  # fmt: skip
        return self.proc

    def wait_reconciled(self, timeout: float = 10.0) -> str:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.proc.output.splitlines():
                if " reconciled " in line:
                    return line
            time.sleep(0.01)
        raise AssertionError(f"no reconcile line in: {self.proc.output}")

    def db_mounts(self) -> dict[str, Counter[str]]:
        db = sqlite3.connect(self.state / "volumes.db", timeout=10)
        try:
            rows = db.execute("SELECT volume, id, count FROM mounts").fetchall()
        finally:
            db.close()
        out: dict[str, Counter[str]] = {}
        for volume, mount_id, count in rows:
            out.setdefault(volume, Counter())[mount_id] = count
        return out


class Worker(threading.Thread):
    """Creates, mounts, writes, unmounts and removes its own volumes until the plugin dies."""

    def __init__(self, plugin: Plugin, tid: int, vols: list[Vol], rnd: int) -> None:
        super().__init__(name=f"workload-{tid}", daemon=True)
        self.plugin = plugin
        self.tid = tid
        self.vols = vols
        self.round = rnd
        self.rng = random.Random(rnd * 1000 + tid)
        self.errors: list[str] = []
        self.calls = 0
        self._n = 0

    def call(self, client: PluginClient, endpoint: str, body: dict[str, Any]) -> Any:
        reply = client.call(endpoint, body)
        self.calls += 1
        if reply.error:
            self.errors.append(f"{endpoint} {body}: {reply.error}")
            raise _Stop
        return reply.json

    def run(self) -> None:
        try:
            with PluginClient(str(self.plugin.sock), timeout=10) as client:
                while True:
                    self.step(client)
        except (OSError, http.client.HTTPException, _Stop):
            return  # the plugin was killed (or answered an error, recorded above)

    def step(self, client: PluginClient) -> None:
        rng = self.rng
        live = [v for v in self.vols if v.state == "present"]
        mounted = [v for v in live if +v.mounts]
        idle = [v for v in live if not +v.mounts]
        r = rng.random()
        if len(live) < 3 or r < 0.25:
            self._n += 1
            vol = Vol(f"r{self.round}-t{self.tid}-{self._n}")
            self.vols.append(vol)
            self.call(client, "VolumeDriver.Create", {"Name": vol.name, "Opts": None})
            vol.state = "present"
        elif r < 0.55 or not mounted:
            vol = rng.choice(live)
            known = [i for i, c in vol.mounts.items() if c > 0]
            mount_id = (
                rng.choice(known) if known and rng.random() < 0.4 else f"{rng.getrandbits(64):016x}"
            )
            vol.pending = ("mount", mount_id)
            reply = self.call(client, "VolumeDriver.Mount", {"Name": vol.name, "ID": mount_id})
            vol.mounts[mount_id] += 1
            vol.pending = None
            self._n += 1
            fname, content = f"f{self._n}", f"{vol.name} {mount_id} {self._n}\n".encode() * 50
            target = Path(reply["Mountpoint"]) / fname
            with open(target, "wb") as fh:
                fh.write(content)
                fh.flush()
            vol.files[fname] = content
        elif r < 0.85 or not idle:
            vol = rng.choice(mounted)
            mount_id = rng.choice([i for i, c in vol.mounts.items() if c > 0])
            vol.pending = ("unmount", mount_id)
            self.call(client, "VolumeDriver.Unmount", {"Name": vol.name, "ID": mount_id})
            vol.mounts[mount_id] -= 1
            vol.pending = None
        else:
            vol = rng.choice(idle)
            vol.state = "removing"
            self.call(client, "VolumeDriver.Remove", {"Name": vol.name})
            vol.state = "removed"


class _Stop(Exception):
    pass


def verify(plugin: Plugin, vols: list[Vol], uncertain: set[str]) -> None:
    """Compares the restarted plugin with what the client was told; resolves in-flight calls."""
    log = plugin.wait_reconciled()
    assert "had vanished" not in log, log  # a volume whose folder went first was half-removed
    with PluginClient(str(plugin.sock), timeout=10) as client:
        began = time.perf_counter()
        reply = client.call("VolumeDriver.List", {})
        assert reply.status == 200 and time.perf_counter() - began < 2
        listed = {v["Name"]: v for v in reply.json["Volumes"]}
        by_name = {v.name: v for v in vols}
        assert set(listed) <= set(by_name), set(listed) - set(by_name)
        db = plugin.db_mounts()
        assert set(db) <= set(listed), "mount rows of a volume that does not exist"
        for vol in vols:
            present = vol.name in listed
            if vol.state == "present":
                assert present, f"{vol.name}: acknowledged Create, volume lost"
            elif vol.state == "removed":
                assert not present, f"{vol.name}: acknowledged Remove, volume back"
            else:  # a Create or Remove in flight at the kill may have gone either way
                uncertain.add(vol.name)
                vol.state = "present" if present else "removed"
            if not present:
                continue
            mountpoint = Path(listed[vol.name]["Mountpoint"])
            assert mountpoint == plugin.base / vol.name
            assert mountpoint.is_dir(), f"{vol.name} exists without its folder"
            for fname, content in vol.files.items():
                assert (mountpoint / fname).read_bytes() == content, f"{vol.name}/{fname} lost"
            counts = db.get(vol.name, Counter())
            expected = +vol.mounts
            allowed = [expected]
            if vol.pending is not None:
                kind, mount_id = vol.pending
                other = expected.copy()
                other[mount_id] += 1 if kind == "mount" else -1
                allowed.append(+other)
            assert counts in allowed, f"{vol.name}: counts {counts}, expected one of {allowed}"
            vol.mounts, vol.pending = Counter(counts), None
            got = client.call("VolumeDriver.Get", {"Name": vol.name}).json["Volume"]["Status"]
            assert (got["Mounts"], got["Consumers"]) == (sum(counts.values()), len(counts))
    # folders of no volume may only come from a Create or Remove cut short by the kill
    folders = {p.name for p in plugin.base.iterdir() if p.name != ".trash"}
    assert folders - set(listed) <= uncertain, folders - set(listed) - uncertain


def test_sigkill_mid_workload_loses_nothing_acknowledged(short_tmp: Path, plugin_name: str) -> None:
    plugin = Plugin(short_tmp, plugin_name)
    per_thread: list[list[Vol]] = [[] for _ in range(THREADS)]
    uncertain: set[str] = set()
    delays = random.Random(3).sample([0.05, 0.12, 0.2, 0.3, 0.45], 4)
    total_calls = 0
    for rnd, delay in enumerate(delays):
        plugin.start()
        verify(plugin, [v for vols in per_thread for v in vols], uncertain)
        workers = [Worker(plugin, t, per_thread[t], rnd) for t in range(THREADS)]
        for w in workers:
            w.start()
        time.sleep(delay)
        assert plugin.proc is not None
        assert plugin.proc.kill() == -signal.SIGKILL
        for w in workers:
            w.join(15)
            assert not w.is_alive()
            assert not w.errors, w.errors
            total_calls += w.calls
    plugin.start()
    everything = [v for vols in per_thread for v in vols]
    verify(plugin, everything, uncertain)
    assert plugin.proc is not None
    assert plugin.proc.stop() == 0
    # the workload did real work, some of it cut short
    assert total_calls > 40, total_calls
    assert sum(1 for v in everything if v.state == "present") >= THREADS
    assert any(v.files for v in everything if v.state == "present")


def test_a_kill_during_start_up_is_harmless(short_tmp: Path, plugin_name: str) -> None:
    plugin = Plugin(short_tmp, plugin_name)
    proc = plugin.start()
    with PluginClient(str(plugin.sock)) as client:
        for i in range(20):
            assert client.call("VolumeDriver.Create", {"Name": f"v{i}"}).error is None
            assert client.call("VolumeDriver.Mount", {"Name": f"v{i}", "ID": "m"}).error is None
    proc.kill()
    plugin.start().kill()  # killed again right away, maybe in the middle of reconciling
    proc = plugin.start()
    assert "nothing to fix" in plugin.wait_reconciled()
    with PluginClient(str(plugin.sock)) as client:
        volumes = client.call("VolumeDriver.List", {}).json["Volumes"]
        assert sorted(v["Name"] for v in volumes) == sorted(f"v{i}" for i in range(20))
        status = client.call("VolumeDriver.Get", {"Name": "v7"}).json["Volume"]["Status"]
        assert status["Mounts"] == 1
    assert proc.stop() == 0


def test_sigterm_exits_0_and_removes_the_socket(short_tmp: Path, plugin_name: str) -> None:
    plugin = Plugin(short_tmp, plugin_name)
    proc = plugin.start()
    with PluginClient(str(plugin.sock)) as client:
        assert client.call("VolumeDriver.Create", {"Name": "v"}).error is None
        assert client.call("VolumeDriver.Mount", {"Name": "v", "ID": "m"}).error is None
    assert plugin.sock.exists()
    assert proc.stop(signal.SIGTERM) == 0
    assert not plugin.sock.exists()
    assert f"dockplug {plugin_name} stopped" in proc.output
    assert "Traceback" not in proc.output
    proc = plugin.start()
    with PluginClient(str(plugin.sock)) as client:
        status = client.call("VolumeDriver.Get", {"Name": "v"}).json["Volume"]["Status"]
        assert status["Mounts"] == 1
    assert proc.stop(signal.SIGINT) == 0
    assert not plugin.sock.exists()
