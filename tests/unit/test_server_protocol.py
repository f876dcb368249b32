"""The server speaks the plugin protocol the way dockerd expects (plugin-protocol.md §1,
dockerd-volume-trace.md): whatever headers Go sends or leaves out, on persistent connections,
with replies dockerd can decode."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from stubs import FixedNetwork

import dockplug
from dockplug.protocol.base import Empty
from dockplug.protocol.ipam import RequestPoolRequest
from dockplug.protocol.volume import CreateRequest, MountRequest, NameRequest
from dockplug.testing.servers import ThreadedPlugin

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"


class MemoryVolumes(dockplug.VolumeDriver):
    """Volumes kept in a dict; remembers every request it was given."""

    def __init__(self) -> None:
        self.volumes: dict[str, dict[str, str]] = {}
        self.requests: list[Any] = []

    def create(self, req: CreateRequest) -> None:
        self.requests.append(req)
        self.volumes[req.name] = req.options

    def remove(self, req: NameRequest) -> None:
        self.volumes.pop(req.name, None)

    def mount(self, req: MountRequest) -> str:
        return f"/mnt/{req.name}"

    def unmount(self, req: MountRequest) -> None:
        pass

    def path(self, req: NameRequest) -> str:
        return f"/mnt/{req.name}"

    def get(self, req: NameRequest) -> dockplug.Volume:
        if req.name not in self.volumes:
            raise dockplug.VolumeNotFound(req.name)
        return dockplug.Volume(name=req.name, mountpoint=f"/mnt/{req.name}")

    def list(self, req: Empty) -> list[dockplug.Volume]:
        return [dockplug.Volume(name=name) for name in self.volumes]


class BridgeWithAddresses(FixedNetwork, dockplug.IpamDriver):
    """One class serving two protocols: a network driver that is its own IPAM driver."""

    def network_capabilities(self, req: Empty) -> str:
        return "local"

    def ipam_capabilities(self, req: Empty) -> tuple[bool, bool]:
        return (True, False)

    def request_pool(self, req: RequestPoolRequest) -> tuple[str, str]:
        return ("pool-1", "10.9.0.0/24")

    def release_pool(self, req: Any) -> None:
        pass

    def request_address(self, req: Any) -> str:
        return "10.9.0.2/24"

    def release_address(self, req: Any) -> None:
        pass


Serve = Callable[..., ThreadedPlugin]
Connect = Callable[..., Any]  # the raw_connection fixture (conftest.py)


@pytest.fixture
def volumes() -> MemoryVolumes:
    return MemoryVolumes()


@pytest.fixture
def plugin(serve_plugin: Serve, volumes: MemoryVolumes) -> ThreadedPlugin:
    return serve_plugin(volumes)


# --- Plugin.Activate ----------------------------------------------------------------------


def test_activate_with_empty_body_reports_the_volume_protocol(plugin: ThreadedPlugin) -> None:
    reply = plugin.client().call("Plugin.Activate")
    assert reply.status == 200
    assert reply.json == {"Implements": ["VolumeDriver"]}


def test_activate_reports_both_protocols_of_a_network_and_ipam_driver(serve_plugin: Serve) -> None:
    plugin = serve_plugin(BridgeWithAddresses())
    assert plugin.client().call("Plugin.Activate").json == {
        "Implements": ["NetworkDriver", "IpamDriver"]
    }


def test_activate_reports_every_protocol_of_every_driver_served(serve_plugin: Serve) -> None:
    plugin = serve_plugin([MemoryVolumes(), BridgeWithAddresses()])
    implements = plugin.client().call("Plugin.Activate").json["Implements"]
    assert sorted(implements) == ["IpamDriver", "NetworkDriver", "VolumeDriver"]


def test_one_class_serves_the_capabilities_of_both_its_protocols(serve_plugin: Serve) -> None:
    client = serve_plugin(BridgeWithAddresses()).client()
    network = client.call("NetworkDriver.GetCapabilities")
    ipam = client.call("IpamDriver.GetCapabilities")
    assert network.status == ipam.status == 200
    assert network.json["Scope"] == "local"
    assert ipam.json["RequiresMACAddress"] is True
    pool = client.call("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault", "Options": None})
    assert pool.json == {"PoolID": "pool-1", "Pool": "10.9.0.0/24"}


# --- request headers and bodies as Go writes them -----------------------------------------


def test_go_request_without_content_type_is_served(
    plugin: ThreadedPlugin, raw_connection: Connect
) -> None:
    conn = raw_connection(plugin.url)
    reply = conn.post("/VolumeDriver.Create", b'{"Name":"v1","Opts":{"a":"1"}}\n')
    assert reply.status == 200
    assert reply.json == {}


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_an_odd_content_type_is_ignored(
    plugin: ThreadedPlugin, volumes: MemoryVolumes, raw_connection: Connect, content_type: str
) -> None:
    conn = raw_connection(plugin.url)
    reply = conn.post(
        "/VolumeDriver.Create",
        b'{"Name":"v1"}\n',
        extra_headers=(("Content-Type", content_type),),
    )
    assert reply.status == 200
    assert "v1" in volumes.volumes


def test_accept_v1_2_is_answered_with_the_v1_content_type(
    plugin: ThreadedPlugin, raw_connection
) -> None:
    reply = raw_connection(plugin.url).post("/VolumeDriver.List", b"{}\n")
    assert reply.status == 200
    assert reply.headers["content-type"] == CONTENT_TYPE


def test_body_ending_in_newline_is_parsed(plugin: ThreadedPlugin, volumes: MemoryVolumes) -> None:
    reply = plugin.client().call("VolumeDriver.Create", raw=b'{"Name":"nl","Opts":{"k":"v"}}\n')
    assert reply.status == 200
    assert volumes.volumes["nl"] == {"k": "v"}


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("/Plugin.Activate", {"Implements": ["VolumeDriver"]}),
        ("/VolumeDriver.List", {"Volumes": []}),
        ("/VolumeDriver.Capabilities", {"Capabilities": {"Scope": "local"}}),
    ],
)
def test_content_length_zero_is_an_empty_request(
    plugin: ThreadedPlugin, raw_connection: Connect, endpoint: str, expected: Any
) -> None:
    reply = raw_connection(plugin.url).post(endpoint, b"")
    assert reply.status == 200
    assert reply.json == expected


@pytest.mark.parametrize(
    "endpoint",
    ["/Plugin.Activate", "/VolumeDriver.List", "/VolumeDriver.Get", "/VolumeDriver.Remove"],
)
def test_every_reply_carries_the_plugin_content_type_and_its_length(
    plugin: ThreadedPlugin, raw_connection: Connect, endpoint: str
) -> None:
    # Get of an unknown volume and Remove without a name are errors: error replies too
    reply = raw_connection(plugin.url).post(endpoint, b"{}\n" if "Volume" in endpoint else b"")
    assert reply.headers["content-type"] == CONTENT_TYPE
    assert int(reply.headers["content-length"]) == len(reply.body)
    json.loads(reply.body)


@pytest.mark.parametrize("host", ["", "plugin.moby.localhost"])
def test_many_requests_share_one_keep_alive_connection(
    plugin: ThreadedPlugin, raw_connection: Connect, host: str
) -> None:
    conn = raw_connection(plugin.url)
    assert conn.post("/Plugin.Activate", host=host).status == 200
    assert conn.post("/VolumeDriver.Capabilities", b"{}\n", host=host).status == 200
    for i in range(50):
        name = f"vol{i}".encode()
        assert conn.post("/VolumeDriver.Get", b'{"Name":"%s"}\n' % name, host=host).status == 500
        created = conn.post(
            "/VolumeDriver.Create", b'{"Name":"%s","Opts":null}\n' % name, host=host
        )
        assert created.status == 200
        mounted = conn.post("/VolumeDriver.Mount", b'{"Name":"%s","ID":"abc"}\n' % name, host=host)
        assert mounted.json == {"Mountpoint": f"/mnt/vol{i}"}
    listed = conn.post("/VolumeDriver.List", b"{}\n", host=host)
    assert len(listed.json["Volumes"]) == 50


def test_pipelined_requests_are_answered_in_order(
    plugin: ThreadedPlugin, raw_connection: Connect
) -> None:
    created, got, activated = raw_connection(plugin.url).pipeline(
        ("/VolumeDriver.Create", b'{"Name":"p1"}\n'),
        ("/VolumeDriver.Get", b'{"Name":"p1"}\n'),
        ("/Plugin.Activate", b""),
    )
    assert created.json == {}
    assert got.json["Volume"]["Name"] == "p1"
    assert activated.json == {"Implements": ["VolumeDriver"]}


def test_null_opts_reach_the_driver_as_no_options(
    plugin: ThreadedPlugin, volumes: MemoryVolumes
) -> None:
    reply = plugin.client().call("VolumeDriver.Create", raw=b'{"Name":"implicit","Opts":null}\n')
    assert reply.status == 200
    assert volumes.requests[-1].options == {}


def test_unknown_request_fields_are_ignored(plugin: ThreadedPlugin, volumes: MemoryVolumes) -> None:
    body = {"Name": "v2", "Opts": {"size": "1G"}, "Labels": {"a": "b"}, "FutureField": [1, 2]}
    reply = plugin.client().call("VolumeDriver.Create", body)
    assert reply.status == 200
    assert volumes.volumes["v2"] == {"size": "1G"}


# --- CreatedAt ---------------------------------------------------------------------------


class DatedVolumes(MemoryVolumes):
    def __init__(self, created_at: Any) -> None:
        super().__init__()
        self.created_at = created_at

    def get(self, req: NameRequest) -> dockplug.Volume:
        return dockplug.Volume(name=req.name, created_at=self.created_at)

    def list(self, req: Empty) -> list[Any]:
        # a plain dict is accepted too, with the same rules
        return [{"Name": "d", "CreatedAt": self.created_at}]


@pytest.mark.parametrize("created_at", ["", None])
def test_blank_created_at_is_left_out_never_sent_empty(
    serve_plugin: Serve, created_at: Any
) -> None:
    client = serve_plugin(DatedVolumes(created_at)).client()
    got = client.call("VolumeDriver.Get", {"Name": "v"})
    listed = client.call("VolumeDriver.List", {})
    assert got.status == listed.status == 200
    assert got.json == {"Volume": {"Name": "v"}}
    assert listed.json == {"Volumes": [{"Name": "d"}]}
    assert b"CreatedAt" not in got.raw + listed.raw


@pytest.mark.parametrize(
    ("created_at", "wire"),
    [
        (datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), "2024-05-06T07:08:09Z"),
        (datetime(2024, 5, 6, 7, 8, 9, 250000), "2024-05-06T07:08:09.250000Z"),  # naive = UTC
        (
            datetime(2024, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2))),
            "2024-05-06T09:08:09+02:00",
        ),
    ],
)
def test_created_at_goes_out_as_rfc3339(
    serve_plugin: Serve, created_at: datetime, wire: str
) -> None:
    client = serve_plugin(DatedVolumes(created_at)).client()
    assert client.call("VolumeDriver.Get", {"Name": "v"}).json["Volume"]["CreatedAt"] == wire
    assert client.call("VolumeDriver.List", {}).json["Volumes"][0]["CreatedAt"] == wire
