"""Clearing stale mount counts (issue 3, State): ``clear_mounts`` persists, the maintenance
endpoint is served but never announced to dockerd, and an Engine API that cannot be reached is a
clear error that clears nothing. No dockerd here: the Engine API is a fake or unreachable."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dockplug.cli.main import cli
from dockplug.drivers.volume import gc
from dockplug.drivers.volume.local import LocalDriver
from dockplug.errors import PluginError, VolumeNotFound
from dockplug.protocol.volume import CreateRequest, MountRequest, NameRequest
from dockplug.testing.servers import ThreadedPlugin

Serve = Callable[..., ThreadedPlugin]
UNREACHABLE = "unix:///nonexistent.sock"


@pytest.fixture
def make_driver(short_tmp: Path) -> Iterator[Callable[..., LocalDriver]]:
    made: list[LocalDriver] = []

    def make(**kw: Any) -> LocalDriver:
        kw.setdefault("log", lambda line: None)
        driver = LocalDriver(base_dir=short_tmp / "base", state_dir=short_tmp / "state", **kw)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.shutdown()


def populate(driver: LocalDriver) -> None:
    """busy: 2 mounts by one ID + 1 by another; stale: 2 mounts; idle: none."""
    for name in ("busy", "stale", "idle"):
        driver.create(CreateRequest(name=name))
    for name, mount_id in [
        ("busy", "a"),
        ("busy", "a"),
        ("busy", "b"),
        ("stale", "c"),
        ("stale", "c"),
    ]:
        driver.mount(MountRequest(name=name, id=mount_id))


def counts(driver: LocalDriver) -> dict[str, dict[str, int]]:
    return {name: driver.mounts.ids(name) for name in sorted(driver.volumes)}


def stored_counts(driver: LocalDriver) -> list[tuple[str, str, int]]:
    return sorted(driver.store.load()[1])


BEFORE = {"busy": {"a": 2, "b": 1}, "idle": {}, "stale": {"c": 2}}


class FakeContainers:
    def __init__(self, running: dict[str, list[str]], fail_on: str | None = None) -> None:
        self.running = running
        self.fail_on = fail_on
        self.asked: list[dict[str, str]] = []

    def list(self, filters: dict[str, str]) -> list[str]:
        self.asked.append(filters)
        if filters["volume"] == self.fail_on:
            import requests

            raise requests.exceptions.ConnectionError("Engine API went away")
        return self.running.get(filters["volume"], [])


class FakeEngine:
    def __init__(self, containers: FakeContainers) -> None:
        self.containers = containers
        self.closed = False

    def close(self) -> None:
        self.closed = True


# --- clear_mounts ----------------------------------------------------------------------------


def test_clear_mounts_clears_the_counts_and_persists(
    make_driver: Callable[..., LocalDriver],
) -> None:
    driver = make_driver()
    populate(driver)
    assert counts(driver) == BEFORE
    assert driver.clear_mounts("busy") == {"a": 2, "b": 1}
    assert counts(driver) == {"busy": {}, "idle": {}, "stale": {"c": 2}}
    assert stored_counts(driver) == [("stale", "c", 2)]
    assert driver.clear_mounts("idle") == {}
    driver.shutdown()
    driver = make_driver()  # a restart: the cleared counts stay cleared
    assert counts(driver) == {"busy": {}, "idle": {}, "stale": {"c": 2}}
    driver.remove(NameRequest(name="busy"))
    assert "busy" not in driver.volumes
    with pytest.raises(VolumeNotFound):
        driver.clear_mounts("busy")


# --- the maintenance endpoint ---------------------------------------------------------------


def test_the_gc_endpoint_is_served_but_not_announced(
    serve_plugin: Serve, make_driver: Callable[..., LocalDriver]
) -> None:
    driver = make_driver()
    plugin = serve_plugin(driver)
    with plugin.client() as client:
        activate = client.call("Plugin.Activate")
        assert activate.json == {"Implements": ["VolumeDriver"]}
        reply = client.call("DockplugVolume.Gc", {})
        assert reply.status == 200 and reply.json == {"Cleared": {}}  # nothing mounted


def test_gc_with_an_unreachable_engine_is_a_clear_error_and_clears_nothing(
    make_driver: Callable[..., LocalDriver],
) -> None:
    driver = make_driver()
    populate(driver)
    with pytest.raises(PluginError) as info:
        gc.collect(driver, docker_host=UNREACHABLE)
    assert str(info.value).startswith("cannot reach the Docker Engine API at")
    assert "nonexistent.sock" in str(info.value) or "No such file" in str(info.value)
    assert counts(driver) == BEFORE
    assert stored_counts(driver) == [("busy", "a", 2), ("busy", "b", 1), ("stale", "c", 2)]


def test_gc_endpoint_with_an_unreachable_engine_replies_the_error(
    serve_plugin: Serve, make_driver: Callable[..., LocalDriver]
) -> None:
    driver = make_driver(docker_host="tcp://127.0.0.1:1")
    populate(driver)
    plugin = serve_plugin(driver)
    with plugin.client() as client:
        for body in ({"DockerHost": UNREACHABLE}, {}):  # {}: the driver's --docker-host
            reply = client.call("DockplugVolume.Gc", body)
            assert reply.status == 500
            assert reply.error is not None
            assert reply.error.startswith("cannot reach the Docker Engine API at")
        status = client.call("VolumeDriver.Get", {"Name": "busy"}).json["Volume"]["Status"]
        assert status["Mounts"] == 3
    assert counts(driver) == BEFORE


def test_gc_clears_only_volumes_no_running_container_uses(
    serve_plugin: Serve,
    make_driver: Callable[..., LocalDriver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines: list[str] = []
    driver = make_driver(log=lines.append)
    populate(driver)
    containers = FakeContainers({"busy": ["container-1"]})
    engines: list[FakeEngine] = []
    hosts: list[str | None] = []

    def engine(docker_host: str | None = None) -> FakeEngine:
        hosts.append(docker_host)
        engines.append(FakeEngine(containers))
        return engines[-1]

    monkeypatch.setattr(gc, "engine", engine)
    plugin = serve_plugin(driver)
    with plugin.client() as client:
        reply = client.call("DockplugVolume.Gc", {"DockerHost": "unix:///run/other.sock"})
        assert reply.status == 200 and reply.json == {"Cleared": {"stale": 2}}
        assert client.call("VolumeDriver.Remove", {"Name": "stale"}).error is None
        error = client.call("VolumeDriver.Remove", {"Name": "busy"}).error
        assert error == "volume busy is in use by 3 mounts"
    assert hosts == ["unix:///run/other.sock"]
    assert sorted(f["volume"] for f in containers.asked) == ["busy", "stale"]  # not idle
    assert all(e.closed for e in engines)
    assert any("gc: stale had 2 mount(s) by 1 id(s)" in line for line in lines), lines
    assert stored_counts(driver) == [("busy", "a", 2), ("busy", "b", 1)]


def test_gc_that_loses_the_engine_midway_is_a_plugin_error(
    make_driver: Callable[..., LocalDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver()
    populate(driver)
    containers = FakeContainers({}, fail_on="busy")
    monkeypatch.setattr(gc, "engine", lambda docker_host=None: FakeEngine(containers))
    with pytest.raises(PluginError, match="Engine API: listing containers failed"):
        gc.collect(driver)
    assert driver.mounts.ids("busy") == {"a": 2, "b": 1}


def test_gc_with_nothing_mounted_does_not_ask_the_engine(
    make_driver: Callable[..., LocalDriver], monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver()
    driver.create(CreateRequest(name="v"))

    def engine(docker_host: str | None = None) -> Any:
        raise AssertionError("the Engine API was asked although nothing is mounted")

    monkeypatch.setattr(gc, "engine", engine)
    assert gc.collect(driver, UNREACHABLE) == {}


def test_periodic_gc_logs_an_unreachable_engine_and_clears_nothing(
    serve_plugin: Serve, make_driver: Callable[..., LocalDriver]
) -> None:
    lines: list[str] = []
    driver = make_driver(log=lines.append, gc_interval=0.05, docker_host=UNREACHABLE)
    populate(driver)
    serve_plugin(driver)
    deadline = time.monotonic() + 10
    while not any(line.startswith("gc: cannot reach the Docker Engine API") for line in lines):
        assert time.monotonic() < deadline, lines
        time.sleep(0.02)
    assert counts(driver) == BEFORE


# --- dockplug local gc ------------------------------------------------------------------------


def test_cli_gc_reports_an_unreachable_engine(
    serve_plugin: Serve, make_driver: Callable[..., LocalDriver]
) -> None:
    driver = make_driver()
    populate(driver)
    plugin = serve_plugin(driver)
    sock = plugin.url.removeprefix("unix://")
    result = CliRunner().invoke(
        cli, ["local", "gc", "--plugin", sock, "--docker-host", UNREACHABLE]
    )
    assert result.exit_code == 1, result.output
    assert "gc failed: cannot reach the Docker Engine API" in result.output
    assert counts(driver) == BEFORE


def test_cli_gc_without_a_running_plugin_edits_the_state_itself(
    make_driver: Callable[..., LocalDriver], short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver()
    populate(driver)
    driver.shutdown()
    args = [
        "local", "gc", "--plugin", str(short_tmp / "not-running.sock"),
        "--state-dir", str(short_tmp / "state"), "--base-dir", str(short_tmp / "base"),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--docker-host", UNREACHABLE])
    assert result.exit_code == 1, result.output
    assert "cannot reach the Docker Engine API" in result.output
    assert counts(make_driver()) == BEFORE
    monkeypatch.setattr(
        gc, "engine", lambda docker_host=None: FakeEngine(FakeContainers({"busy": ["c1"]}))
    )
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "stale: cleared 2 stale mount(s)" in result.output
    assert counts(make_driver()) == {"busy": {"a": 2, "b": 1}, "idle": {}, "stale": {}}
