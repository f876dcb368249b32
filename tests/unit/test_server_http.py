"""dockplug's own HTTP/1.1 layer (server/http.py): the framing rules Go's client and curl rely
on beyond the plain request dockerd sends, the metrics hook, and cached Get replies going stale
never."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dockplug
from dockplug.drivers.volume.local.driver import LocalDriver
from dockplug.protocol.base import Empty
from dockplug.protocol.volume import CreateRequest, MountRequest, NameRequest
from dockplug.testing.servers import ThreadedPlugin

Serve = Callable[..., ThreadedPlugin]
Connect = Callable[..., Any]


class Names(dockplug.VolumeDriver):
    """Creates record names; Mount of 'slow' waits until released."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.release = threading.Event()

    def create(self, req: CreateRequest) -> None:
        self.names.append(req.name)

    def remove(self, req: NameRequest) -> None:
        pass

    def mount(self, req: MountRequest) -> str:
        if req.name == "slow":
            self.release.wait(10)
        return f"/mnt/{req.name}"

    def unmount(self, req: MountRequest) -> None:
        pass

    def path(self, req: NameRequest) -> str:
        return "/mnt"

    async def get(self, req: NameRequest) -> dockplug.Volume:
        return dockplug.Volume(name=req.name)

    def list(self, req: Empty) -> list[dockplug.Volume]:
        return []


@pytest.fixture
def driver() -> Names:
    return Names()


@pytest.fixture
def plugin(serve_plugin: Serve, driver: Names) -> ThreadedPlugin:
    return serve_plugin(driver)


def raw(url: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(url.removeprefix("unix://"))
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_chunked_request_body_is_decoded(
    plugin: ThreadedPlugin, driver: Names, raw_connection: Connect
) -> None:
    conn = raw_connection(plugin.url)
    body = b'{"Name":"chunky","Opts":null}\n'
    conn.send(
        b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (5, body[:5])
        + b"%x\r\n%s\r\n" % (len(body) - 5, body[5:])
        + b"0\r\n\r\n"
    )
    reply = conn.read_reply()
    assert reply.status == 200, reply.body
    assert driver.names == ["chunky"]
    assert conn.post("/VolumeDriver.Get", b'{"Name":"chunky"}\n').status == 200  # still usable


def test_chunked_body_over_the_limit_is_413_and_the_connection_stays_usable(
    plugin: ThreadedPlugin, driver: Names, raw_connection: Connect
) -> None:
    plugin.server.app.body_limit = 1000
    conn = raw_connection(plugin.url)
    piece = b"x" * 600
    conn.send(
        b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n%s\r\n" % (len(piece), piece)) * 3
        + b"0\r\n\r\n"
    )
    reply = conn.read_reply()
    assert reply.status == 413
    assert "1000 byte limit" in reply.json["Err"]
    assert driver.names == []
    assert conn.post("/VolumeDriver.Create", b'{"Name":"after"}\n').status == 200


def test_expect_100_continue_is_answered_before_the_body(plugin: ThreadedPlugin) -> None:
    sock = raw(plugin.url)
    body = b'{"Name":"curl"}'
    sock.sendall(
        b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    sock.sendall(body)
    assert b"HTTP/1.1 200 OK\r\n" in sock.recv(1000)
    sock.close()


def test_bytes_that_are_not_http_get_a_json_400_and_a_close(plugin: ThreadedPlugin) -> None:
    sock = raw(plugin.url)
    sock.sendall(b"\x16\x03\x01 this is no HTTP request\r\n\r\n")
    data = read_all(sock)  # returns: the server closed the connection
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b'{"Err": "malformed HTTP request' in data
    sock.close()


def test_connection_close_is_honoured_after_the_reply(plugin: ThreadedPlugin) -> None:
    sock = raw(plugin.url)
    sock.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n")
    data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in data
    assert data.endswith(b'{"Implements": ["VolumeDriver"]}')
    sock.close()


def test_http_1_0_client_is_answered_and_closed(plugin: ThreadedPlugin) -> None:
    sock = raw(plugin.url)
    sock.sendall(b"POST /VolumeDriver.List HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
    data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b'{"Volumes":[]}')
    sock.close()


def test_query_and_percent_escapes_are_not_part_of_the_endpoint(
    plugin: ThreadedPlugin, raw_connection: Connect
) -> None:
    conn = raw_connection(plugin.url)
    assert conn.post("/Plugin%2EActivate?x=1").json == {"Implements": ["VolumeDriver"]}


def test_pipelined_requests_behind_a_slow_one_wait_their_turn(
    plugin: ThreadedPlugin, driver: Names, raw_connection: Connect
) -> None:
    conn = raw_connection(plugin.url)
    conn.send(
        b"".join(
            [
                _go(b"/VolumeDriver.Mount", b'{"Name":"slow","ID":"1"}'),
                _go(b"/VolumeDriver.Get", b'{"Name":"next"}'),
            ]
        )
    )
    time.sleep(0.2)
    driver.release.set()
    first, second = conn.read_reply(), conn.read_reply()
    assert first.json == {"Mountpoint": "/mnt/slow"}
    assert second.json == {"Volume": {"Name": "next"}}


def _go(path: bytes, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: \r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)


def test_observer_hook_sees_every_reply(plugin: ThreadedPlugin) -> None:
    seen: list[tuple[str, int, float]] = []
    plugin.server.app.observer = lambda endpoint, status, seconds: seen.append(
        (endpoint, status, seconds)
    )
    with plugin.client() as client:
        client.call("VolumeDriver.Create", {"Name": "v"})
        client.call("VolumeDriver.Create", {})
        client.call("Nope.Nothing", {})
        client.call("Plugin.Activate")
    assert [(e, s) for e, s, _ in seen] == [
        ("/VolumeDriver.Create", 200),
        ("/VolumeDriver.Create", 400),
        ("/Nope.Nothing", 404),
        ("/Plugin.Activate", 200),
    ]
    assert all(0 <= seconds < 5 for _, _, seconds in seen)


def test_cached_get_reply_follows_every_change(serve_plugin: Serve, short_tmp: Path) -> None:
    local = LocalDriver(base_dir=short_tmp / "v", state_dir=short_tmp / "s")
    plugin = serve_plugin(local)

    def status(client: Any) -> tuple[int, int]:
        st = client.call("VolumeDriver.Get", {"Name": "c"}).json["Volume"]["Status"]
        return st["Mounts"], st["Consumers"]

    with plugin.client() as client:
        assert client.call("VolumeDriver.Create", {"Name": "c"}).status == 200
        assert status(client) == status(client) == (0, 0)  # the second one from the cache
        client.call("VolumeDriver.Mount", {"Name": "c", "ID": "a"})
        assert status(client) == (1, 1)
        client.call("VolumeDriver.Mount", {"Name": "c", "ID": "b"})
        assert status(client) == (2, 2)
        client.call("VolumeDriver.Unmount", {"Name": "c", "ID": "a"})
        assert status(client) == (1, 1)
        assert local.clear_mounts("c") == {"b": 1}  # maintenance, outside any request
        assert status(client) == (0, 0)
        assert client.call("VolumeDriver.Remove", {"Name": "c"}).status == 200
        assert client.call("VolumeDriver.Get", {"Name": "c"}).status == 500


def test_a_broken_observer_is_switched_off_and_never_fails_a_call(
    serve_plugin: Serve, capfd: pytest.CaptureFixture[str]
) -> None:
    plugin = serve_plugin(Names())
    calls: list[str] = []

    def broken(endpoint: str, status: int, seconds: float) -> None:
        calls.append(endpoint)
        raise RuntimeError("registry gone")

    plugin.server.app.observer = broken
    with plugin.client() as client:
        assert client.call("VolumeDriver.Create", {"Name": "v"}).status == 200
        assert client.call("VolumeDriver.Create", {"Name": "w"}).status == 200
    assert calls == ["/VolumeDriver.Create"]
    assert plugin.server.app.observer is None
    plugin.stop()
    assert "metrics hook" in capfd.readouterr().out


class TimedVolumes(dockplug.VolumeDriver):
    """async methods that use what needs a running task: asyncio.timeout and wait_for."""

    async def get(self, req: NameRequest) -> dockplug.Volume:
        async with asyncio.timeout(1):
            await asyncio.sleep(0)
        return dockplug.Volume(name=req.name)

    async def list(self, req: Empty) -> list[dockplug.Volume]:
        async with asyncio.timeout(1):  # never waits: the reply is ready at once
            return [dockplug.Volume(name="a")]

    async def path(self, req: NameRequest) -> str:
        return await asyncio.wait_for(asyncio.sleep(0, result="/p"), 1)

    def create(self, req: CreateRequest) -> None:
        pass

    def remove(self, req: NameRequest) -> None:
        pass

    def mount(self, req: MountRequest) -> str:
        return "/p"

    def unmount(self, req: MountRequest) -> None:
        pass


def test_async_methods_run_in_a_task_so_timeouts_work(serve_plugin: Serve) -> None:
    """Eager dispatch is for sync methods; an async one may need asyncio.current_task()."""
    plugin = serve_plugin(TimedVolumes())
    with plugin.client() as client:
        assert client.call("VolumeDriver.Get", {"Name": "v"}).json["Volume"]["Name"] == "v"
        assert client.call("VolumeDriver.List", {}).json["Volumes"][0]["Name"] == "a"
        assert client.call("VolumeDriver.Path", {"Name": "v"}).json["Mountpoint"] == "/p"


def _loop_cpu_seconds(plugin: ThreadedPlugin) -> float:
    """CPU time of the plugin's event-loop thread (from /proc: the test runs in another)."""
    native = plugin._thread.native_id
    with open(f"/proc/self/task/{native}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_poll_runs_only_in_its_window_after_a_reply(serve_plugin: Serve) -> None:
    """The loop polls without sleeping for busy_poll seconds after each reply and then sleeps:
    a plugin nobody calls burns no CPU. (A 500 ms window here, to be seen at clock-tick
    resolution on a loaded machine; the default is 50 µs.)"""
    plugin = serve_plugin(Names(), busy_poll=0.5)
    http = plugin.server.http
    assert not http._polling  # nothing answered yet: asleep
    idle0 = _loop_cpu_seconds(plugin)
    time.sleep(0.3)
    assert _loop_cpu_seconds(plugin) - idle0 < 0.04
    with plugin.client() as client:
        assert client.call("Plugin.Activate").status == 200
        assert http._polling  # the window after that reply
        busy0 = _loop_cpu_seconds(plugin)
        time.sleep(0.7)
        assert not http._polling  # the window closed by itself
        assert _loop_cpu_seconds(plugin) - busy0 >= 0.1  # it polled: CPU spent, no sleep
        idle1 = _loop_cpu_seconds(plugin)
        time.sleep(0.3)
        assert _loop_cpu_seconds(plugin) - idle1 < 0.04
        assert client.call("VolumeDriver.Path", {"Name": "v"}).status == 200  # still serving


def test_busy_poll_off_never_polls(serve_plugin: Serve) -> None:
    plugin = serve_plugin(Names(), busy_poll=0.0)
    with plugin.client() as client:
        assert client.call("Plugin.Activate").status == 200
        assert not plugin.server.http._polling


def test_busy_poll_us_option_and_its_env() -> None:
    from dockplug.cli.options import TRANSPORT_KEYS, serve_options

    params: dict[str, Any] = dict.fromkeys(TRANSPORT_KEYS)
    params.update(name="p", spec_dir=Path("/tmp"), announce="none", log_format="text")
    params["busy_poll_us"] = 0
    assert serve_options(dict(params)).busy_poll == 0.0
    params["busy_poll_us"] = 50
    assert serve_options(dict(params)).busy_poll == pytest.approx(50e-6)
    from click.testing import CliRunner

    from dockplug.cli.main import cli

    out = CliRunner().invoke(cli, ["serve", "local", "--help"]).output
    assert "--busy-poll-us" in out and "DOCKPLUG_BUSY_POLL_US" in out
    bad = CliRunner().invoke(cli, ["serve", "local", "--busy-poll-us", "-1"])
    assert bad.exit_code == 2 and "--busy-poll-us" in bad.output
