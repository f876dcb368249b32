"""What a real dockerd sends a plugin, recorded through ``dockplug record`` and kept as fixtures.

Each test runs docker commands against a real dockerd whose plugin is the recorder in front of a
real dockplug plugin, then compares the calls with the stored recording in
``dockplug/conformance/recordings/`` (endpoints, order, header names, body keys; not the
random ids). A future dockerd that calls plugins differently fails here. To re-record the
fixtures, run with ``DOCKPLUG_RECORD=1``; the harness replays them (``conformance/replay.py``).
Each engine series has its own (20.10's at the top, the others' in ``recordings/<series>/``):
run with ``DOCKPLUG_ENGINE=28`` to check or record 28's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dockplug.client import resolve
from dockplug.conformance.recorder import (
    FORMAT,
    Normaliser,
    Recorder,
    ThreadedRecorder,
    normalise,
    peer_pid,
)
from dockplug.conformance.replay import (
    RECORDINGS,
    engine_series,
    load,
    recording_path,
    signature,
)
from dockplug.server.discovery import SOCKET_DIR
from dockplug.testing import engines
from dockplug.testing.dockerd import Dockerd, unavailable_reason
from dockplug.testing.servers import SubprocessPlugin, ThreadedPlugin

pytestmark = pytest.mark.dockerd

UPDATE = os.environ.get("DOCKPLUG_RECORD") == "1"
RUN_V = "docker run -d --name {ctr} -v {vol1}:/data"


def _settle(rec: Recorder, quiet: float = 0.4, limit: float = 10.0) -> None:
    """Waits until no call came in for ``quiet`` seconds (dockerd may finish after the CLI)."""
    deadline = time.monotonic() + limit
    seen = -1
    while time.monotonic() < deadline:
        if len(rec.exchanges) == seen:
            return
        seen = len(rec.exchanges)
        time.sleep(quiet)


class Session:
    """Runs labelled steps and collects the calls each one caused."""

    def __init__(self, rec: Recorder, daemon: Dockerd, literals: dict[str, str]) -> None:
        self.rec, self.daemon, self.literals = rec, daemon, literals
        self.pids = {_pid(daemon)}

    def step(self, label: str, action: Callable[[], Any]) -> None:
        _settle(self.rec)
        self.rec.step = label
        action()
        _settle(self.rec)

    def docker(self, command: str, note: str = "") -> None:
        """``command`` (with placeholders) is both the step's label and what runs."""
        args = [_fill(a, self.literals) for a in command.split()[1:]]
        self.step(command + (f" ({note})" if note else ""), lambda: self.daemon.docker(*args))


def _cleanup(daemon: Dockerd, lit: dict[str, str]) -> None:
    """After a failed step only: a `docker volume rm` of a volume that is already gone asks
    every plugin on the host (other tests' too) and can hang."""
    daemon.docker("rm", "-f", lit["{ctr}"], check=False)
    daemon.docker("volume", "rm", lit["{vol1}"], check=False, timeout=30)


def _pid(daemon: Dockerd) -> int:
    """dockerd's pid, from its API socket (the fixture may attach to a dockerd run elsewhere)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(daemon.host.removeprefix("unix://"))
        pid = peer_pid(sock)
    assert pid is not None
    return pid


def _fill(text: str, literals: dict[str, str]) -> str:
    for placeholder, value in literals.items():
        text = text.replace(placeholder, value)
    return text


def _keep(
    scenario: str,
    s: Session,
    about: str,
    names: tuple[str, ...] = ("{vol1}",),
    unordered: bool = False,
) -> None:
    """Normalises the recording; writes it as the fixture (DOCKPLUG_RECORD=1) or compares."""
    rec, literals, engine, pids = s.rec, s.literals, s.daemon.version, s.pids
    norm = Normaliser(
        names=[literals[n] for n in names if n in literals],
        literals={v: k for k, v in literals.items() if k not in names},
    )
    fresh: dict[str, Any] = {
        "format": FORMAT,
        "scenario": scenario,
        "about": about,
        "engine": engine,
        "unordered": unordered,
        # only our dockerd's calls: every dockerd on the host activates every plugin socket
        "exchanges": normalise([ex for ex in rec.exchanges if ex["pid"] in pids], norm),
    }
    errors = [ex for ex in fresh["exchanges"] if "error" in ex and "restart" not in ex["step"]]
    assert not errors, errors
    # each engine against its own recordings: 26 and 28 call plugins differently from 20.10
    series = engine_series(engine)
    path = Path(str(recording_path(scenario, series, fallback=False)))
    where = path.relative_to(Path(str(RECORDINGS)))
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(
                f"no fixture {where} for dockerd {series}: run with DOCKPLUG_RECORD=1 "
                f"(and DOCKPLUG_ENGINE={series}) to record it"
            )
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(fresh, indent=1) + "\n")
        return
    stored = load(scenario, series)
    assert signature(fresh) == signature(stored), (
        f"dockerd {engine} no longer calls the plugin as recorded in {where} "
        f"(recorded with {stored.get('engine')}); re-record with DOCKPLUG_RECORD=1 if intended"
    )


@pytest.fixture
def local_args(short_tmp: Path) -> list[str]:
    sock = short_tmp / "local.sock"
    return [
        "serve", "local", "--name", "rec-local", "--socket", str(sock), "--announce", "none",
        "--base-dir", str(short_tmp / "vols"), "--state-dir", str(short_tmp / "state"),
    ]  # fmt: skip


@contextmanager
def _recorded_local(
    plugin_name: str, short_tmp: Path, args: list[str]
) -> Iterator[tuple[Recorder, SubprocessPlugin]]:
    sock = short_tmp / "local.sock"
    listen = SOCKET_DIR / f"{plugin_name}.sock"
    with (
        SubprocessPlugin(args, wait_for=sock) as plugin,
        ThreadedRecorder(listen, resolve(str(sock))) as rec,
    ):
        yield rec, plugin


def _literals(plugin_name: str, short_tmp: Path, **more: str) -> dict[str, str]:
    return {"{driver}": plugin_name, "{base}": str(short_tmp), **more}


def test_volume_cli(
    dockerd: Dockerd, plugin_name: str, short_tmp: Path, local_args: list[str]
) -> None:
    # (not `docker volume inspect MISSING`: that asks every plugin on the host, other tests' too)
    lit = _literals(plugin_name, short_tmp, **{"{vol1}": f"{plugin_name}-a"})
    with _recorded_local(plugin_name, short_tmp, local_args) as (rec, _):
        s = Session(rec, dockerd, lit)
        s.docker("docker volume create -d {driver} -o mode=0750 {vol1}")
        s.docker("docker volume create -d {driver} {vol1}", "again")
        s.docker("docker volume inspect {vol1}")
        s.docker("docker volume ls")
        s.docker("docker volume rm {vol1}")
    _keep("volume-cli", s, "docker volume create -o/inspect/ls/rm")


def test_container_lifecycle(
    dockerd: Dockerd, busybox_image: str, plugin_name: str, short_tmp: Path, local_args: list[str]
) -> None:
    lit = _literals(
        plugin_name,
        short_tmp,
        **{"{vol1}": f"{plugin_name}-c", "{ctr}": plugin_name, "{image}": busybox_image},
    )
    probe = short_tmp / "probe.txt"
    probe.write_text("hello\n")
    lit["{file}"] = str(probe)
    with _recorded_local(plugin_name, short_tmp, local_args) as (rec, _):
        s = Session(rec, dockerd, lit)
        try:
            s.docker(
                RUN_V + " --volume-driver {driver} {image} sleep 1d",
                "implicit create",
            )
            s.docker("docker cp {file} {ctr}:/data/f", "running container")
            s.docker("docker restart -t 0 {ctr}")
            s.docker("docker stop -t 0 {ctr}")
            s.docker("docker cp {file} {ctr}:/data/g", "stopped container")
            s.docker("docker rm {ctr}")
            s.docker("docker volume rm {vol1}")
        except BaseException:
            _cleanup(dockerd, lit)
            raise
    about = "docker run -v (implicit create), cp while running, restart, stop, cp, rm"
    _keep("container-lifecycle", s, about)


def test_plugin_restart(
    dockerd: Dockerd, busybox_image: str, plugin_name: str, short_tmp: Path, local_args: list[str]
) -> None:
    lit = _literals(
        plugin_name,
        short_tmp,
        **{"{vol1}": f"{plugin_name}-p", "{ctr}": plugin_name, "{image}": busybox_image},
    )
    with _recorded_local(plugin_name, short_tmp, local_args) as (rec, plugin):
        s = Session(rec, dockerd, lit)
        try:
            s.docker("docker volume create -d {driver} {vol1}")
            s.docker(RUN_V + " {image} sleep 1d")

            def restart() -> None:
                plugin.stop()
                plugin.start()

            s.step("plugin restart (SIGTERM, start again)", restart)
            s.docker("docker volume inspect {vol1}")
            s.docker("docker stop -t 0 {ctr}")
            s.docker("docker rm {ctr}")
            s.docker("docker volume rm {vol1}")
        except BaseException:
            _cleanup(dockerd, lit)
            raise
    _keep("plugin-restart", s, "a container holds the volume while the plugin restarts")


def _own_dockerd(root: Path, *extra: str) -> Dockerd:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    return Dockerd(root).start(extra_args=extra)


def test_dockerd_live_restore(plugin_name: str, short_tmp: Path, local_args: list[str]) -> None:
    """dockerd restarts with --live-restore while a container holds the volume."""
    daemon = _own_dockerd(Path(f"/tmp/dp-lr-{plugin_name}"), "--live-restore")
    try:
        image = daemon.busybox_image()
        lit = _literals(
            plugin_name,
            short_tmp,
            **{"{vol1}": f"{plugin_name}-l", "{ctr}": plugin_name, "{image}": image},
        )
        with _recorded_local(plugin_name, short_tmp, local_args) as (rec, _):
            s = Session(rec, daemon, lit)
            s.docker(RUN_V + " --volume-driver {driver} {image} sleep 1d")

            def restart() -> None:
                assert daemon.proc is not None
                daemon.proc.send_signal(signal.SIGTERM)
                daemon.proc.wait(60)
                daemon.start(extra_args=("--live-restore",))
                s.pids.add(_pid(daemon))

            s.step("dockerd restart (--live-restore, container keeps running)", restart)
            running = daemon.docker("inspect", "-f", "{{.State.Running}}", lit["{ctr}"]).stdout
            assert running.strip() == "true"
            s.docker("docker volume inspect {vol1}")
            s.docker("docker stop -t 0 {ctr}")
            s.docker("docker rm {ctr}")
            s.docker("docker volume rm {vol1}")
        _keep("dockerd-live-restore", s, "dockerd --live-restore restarts under a container")
    finally:
        daemon.stop()


def test_authz_create_run(
    plugin_name: str, short_tmp: Path, serve_plugin: Callable[..., ThreadedPlugin]
) -> None:
    """A dockerd with --authorization-plugin REC, REC recording in front of an allow-all plugin."""
    from dockplug import AuthzPlugin

    class AllowAll(AuthzPlugin):
        def authz_req(self, req: Any) -> bool:
            return True

        def authz_res(self, req: Any) -> bool:
            return True

    plugin = serve_plugin(AllowAll(), name="rec-authz")
    with ThreadedRecorder(SOCKET_DIR / f"{plugin_name}.sock", resolve(plugin.url)) as rec:
        rec.step = "dockerd start --authorization-plugin {driver}"
        daemon = _own_dockerd(
            Path(f"/tmp/dp-az-{plugin_name}"), f"--authorization-plugin={plugin_name}"
        )
        try:
            image = daemon.busybox_image()
            lit = _literals(
                plugin_name,
                short_tmp,
                **{"{ctr}": plugin_name, "{image}": image, "{root}": str(daemon.root)},
            )
            s = Session(rec, daemon, lit)
            s.docker("docker create --name {ctr} {image} true")
            s.docker("docker rm {ctr}")
            s.docker("docker run --rm {image} true")
        finally:
            daemon.stop()
        rec.exchanges[:] = [
            ex
            for ex in rec.exchanges
            if not ex["step"].startswith("dockerd start") or ex["path"] == "/Plugin.Activate"
        ]  # the image import at start is test set-up, not what the recording is about
    _keep(
        "authz-create-run",
        s,
        "docker create / docker run under an allow-all authz plugin",
        names=(),
        unordered=True,
    )


@pytest.fixture
def netns_dockerd(plugin_name: str, short_tmp: Path) -> Iterator[Callable[..., Dockerd]]:
    """Starts a dockerd in a network namespace of its own: user bridges (IPAM tests) then live
    there, not on the host. ``ip netns exec`` would remount /sys and hide the cgroups; the
    ``dockerd`` on PATH is a wrapper that enters the namespace with nsenter."""
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        pytest.skip("needs ip (iproute2) and nsenter (util-linux)")
    if unavailable_reason():
        pytest.skip(str(unavailable_reason()))
    engine = engines.prepare(engines.selected())
    ns = f"dp-{plugin_name}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    wrapper = short_tmp / "bin" / "dockerd"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec nsenter --net=/run/netns/{ns} {engine.dockerd} "$@"\n')
    wrapper.chmod(0o755)
    in_netns = dataclasses.replace(engine, dockerd=wrapper)
    started: list[Dockerd] = []

    def start(*extra: str) -> Dockerd:
        daemon = Dockerd(Path(f"/tmp/dp-ns-{plugin_name}"), engine=in_netns)
        started.append(daemon)
        return daemon.start(extra_args=extra)

    yield start
    for daemon in started:
        daemon.stop()
    subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def test_ipam_network_lifecycle(
    plugin_name: str,
    short_tmp: Path,
    serve_plugin: Callable[..., ThreadedPlugin],
    netns_dockerd: Callable[..., Dockerd],
) -> None:
    """docker network create --ipam-driver REC (bridge driver), a container on it, rm."""
    from dockplug import IpamDriver

    class OnePool(IpamDriver):
        """Hands out 10.231.0.0/24: .1 for the gateway, then .2, .3, ..."""

        def __init__(self) -> None:
            self.next = 2

        def request_pool(self, req: Any) -> tuple[str, str]:
            return "pool-1", req.pool or "10.231.0.0/24"

        def release_pool(self, req: Any) -> None:
            return None

        def request_address(self, req: Any) -> str:
            if req.address:
                return f"{req.address}/24"
            if req.is_gateway:
                return "10.231.0.1/24"
            self.next += 1
            return f"10.231.0.{self.next - 1}/24"

        def release_address(self, req: Any) -> None:
            return None

    plugin = serve_plugin(OnePool(), name="rec-ipam")
    with ThreadedRecorder(SOCKET_DIR / f"{plugin_name}.sock", resolve(plugin.url)) as rec:
        daemon = netns_dockerd()
        image = daemon.busybox_image()
        lit = _literals(
            plugin_name, short_tmp, **{"{net}": plugin_name, "{image}": image, "{ctr}": plugin_name}
        )
        s = Session(rec, daemon, lit)
        try:
            s.docker("docker network create --ipam-driver {driver} --subnet 10.231.0.0/24 {net}")
            s.docker("docker run --rm --name {ctr} --network {net} {image} true")
            s.docker("docker network rm {net}")
        except BaseException:
            daemon.docker("network", "rm", plugin_name, check=False)
            raise
    _keep("ipam-network", s, "docker network create --ipam-driver, run on it, network rm", names=())
