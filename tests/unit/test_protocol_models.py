"""Wire models of every protocol, checked against bodies exactly as dockerd sends and reads them
(plugin-protocol.md §2-§8): key casing, ``null`` maps, absent and unknown keys, reply shapes."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from dockplug.errors import PluginError
from dockplug.protocol import (
    ALL_PROTOCOLS,
    AUTHZ,
    IPAM,
    LOG,
    METRICS,
    NETWORK,
    VOLUME,
    AuthzPlugin,
    IpamDriver,
    LogDriver,
    MetricsCollector,
    NetworkDriver,
    Volume,
    VolumeDriver,
    authz,
    ipam,
    log,
    metrics,
    network,
)
from dockplug.protocol.base import (
    Driver,
    Empty,
    Endpoint,
    Lane,
    Protocol,
    implemented,
    protocols_of,
)


def endpoint(proto: Protocol, name: str) -> Endpoint:
    path = name if name.startswith("/") else f"/{name}"
    return next(ep for ep in proto.endpoints if ep.path == path)


def wire(model: Any) -> Any:
    return json.loads(model.wire())


# --- every protocol -------------------------------------------------------------------------

BASES: dict[str, tuple[type[Driver], str]] = {
    "VolumeDriver": (VolumeDriver, "VolumeDriver"),
    "NetworkDriver": (NetworkDriver, "NetworkDriver"),
    "IpamDriver": (IpamDriver, "IpamDriver"),
    "authz": (AuthzPlugin, "AuthZPlugin"),
    "LogDriver": (LogDriver, "LogDriver"),
    "MetricsCollector": (MetricsCollector, "MetricsCollector"),
}


def test_all_protocols_lists_each_interface_once() -> None:
    assert ALL_PROTOCOLS == (VOLUME, NETWORK, IPAM, AUTHZ, LOG, METRICS)
    assert {p.implements for p in ALL_PROTOCOLS} == set(BASES)


def test_implements_and_managed_types_are_exactly_what_dockerd_matches() -> None:
    assert [(p.implements, p.managed_type) for p in ALL_PROTOCOLS] == [
        ("VolumeDriver", "docker.volumedriver/1.0"),
        ("NetworkDriver", "docker.networkdriver/1.0"),
        ("IpamDriver", "docker.ipamdriver/1.0"),
        ("authz", "docker.authz/1.0"),
        ("LogDriver", "docker.logdriver/1.0"),
        ("MetricsCollector", "docker.metricscollector/1.0"),
    ]


@pytest.mark.parametrize("proto", ALL_PROTOCOLS, ids=lambda p: p.implements)
def test_endpoint_paths_and_methods_match_the_base_class(proto: Protocol) -> None:
    base, prefix = BASES[proto.implements]
    assert proto in base.protocols
    paths = [ep.path for ep in proto.endpoints]
    assert len(set(paths)) == len(paths)
    for ep in proto.endpoints:
        assert ep.path.startswith(f"/{prefix}."), ep.path
        assert callable(getattr(base, ep.method, None)), ep.method


def test_method_names_are_unique_across_protocols_so_one_class_can_serve_several() -> None:
    methods = [ep.method for proto in ALL_PROTOCOLS for ep in proto.endpoints]
    assert len(set(methods)) == len(methods)

    class Both(NetworkDriver, IpamDriver):
        pass

    assert protocols_of(Both) == [NETWORK, IPAM]


@pytest.mark.parametrize("proto", ALL_PROTOCOLS, ids=lambda p: p.implements)
def test_default_answers_fit_their_reply_adapters(proto: Protocol) -> None:
    base, _ = BASES[proto.implements]
    driver = base()
    for ep in proto.endpoints:
        if not implemented(driver, ep):
            continue
        request = ep.request() if ep.request is Empty else None
        if request is not None:
            reply = ep.reply(getattr(driver, ep.method)(request), request)
            assert isinstance(json.loads(reply.wire()), dict)


# --- NetworkDriver ----------------------------------------------------------------------------

CREATE_NETWORK = (
    b'{"NetworkID":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",'
    b'"Options":{"com.docker.network.enable_ipv4":true,"com.docker.network.enable_ipv6":false,'
    b'"com.docker.network.generic":{"mtu":"1400","flag":true},'
    b'"com.docker.network.internal":true},'
    b'"IPv4Data":[{"AddressSpace":"LocalDefault","Pool":"172.28.0.0/16",'
    b'"Gateway":"172.28.0.1/16","AuxAddresses":{"router":"172.28.0.5/16"}}],'
    b'"IPv6Data":null,"SomethingNew":1}\n'
)


def test_network_bodies_of_dockerd_28() -> None:
    """As dockerd 28.5 sent them (recorded): enable_ipv4, IPv6Data [] for an IPv4-only network,
    and no_proxy_6to4 among ProgramExternalConnectivity's options."""
    net_id = "fb8bf40ad64271cb801f6233608b145284850c182dffa1575d7822ce5de36705"
    create = network.CreateNetworkRequest.model_validate_json(
        f'{{"NetworkID":"{net_id}","Options":{{"com.docker.network.enable_ipv4":true,'
        '"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{"color":"blue"}},'
        '"IPv4Data":[{"AddressSpace":"LocalDefault","Gateway":"198.18.10.1/24",'
        '"Pool":"198.18.10.0/24"}],"IPv6Data":[]}\n'
    )
    assert create.ipv6_data == [] and create.driver_options == {"color": "blue"}
    assert create.option("com.docker.network.enable_ipv4") is True
    program = network.ExternalConnectivityRequest.model_validate_json(
        f'{{"NetworkID":"{net_id}","EndpointID":"{net_id[::-1]}","Options":'
        '{"com.docker.network.driver.private.no_proxy_6to4":false,'
        '"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}\n'
    )
    assert program.option("com.docker.network.driver.private.no_proxy_6to4") is False


def test_network_create_parses_nested_options_and_null_ipv6() -> None:
    req = network.CreateNetworkRequest.model_validate_json(CREATE_NETWORK)
    assert req.network_id.startswith("0123456789ab")
    assert req.option("com.docker.network.internal") is True
    assert req.option("com.docker.network.enable_ipv6") is False
    assert req.driver_options == {"mtu": "1400", "flag": "True"}
    assert req.ipv6_data is None
    assert req.ipv4_data is not None
    pool = req.ipv4_data[0]
    assert (pool.pool, pool.gateway, pool.aux_addresses) == (
        "172.28.0.0/16",
        "172.28.0.1/16",
        {"router": "172.28.0.5/16"},
    )
    assert endpoint(NETWORK, "NetworkDriver.CreateNetwork").subject(req) == "net=0123456789ab"


def test_network_null_options_read_as_empty() -> None:
    req = network.CreateNetworkRequest.model_validate_json(b'{"NetworkID":"n","Options":null}')
    assert req.options is None
    assert req.option("x", "d") == "d"
    assert req.driver_options == {}


def test_ipam_data_always_sends_address_space_and_omits_unset_fields() -> None:
    assert wire(network.IPAMData(address_space="LocalDefault")) == {"AddressSpace": "LocalDefault"}


def test_network_capabilities_reply_keys() -> None:
    ep = endpoint(NETWORK, "NetworkDriver.GetCapabilities")
    assert ep.request is Empty
    assert ep.lane is Lane.FAST
    assert wire(ep.reply("global", Empty())) == {
        "Scope": "global",
        "ConnectivityScope": "",
        "GwAllocChecker": False,
    }
    assert wire(NetworkDriver().network_capabilities(Empty())) == {
        "Scope": "local",
        "ConnectivityScope": "",
        "GwAllocChecker": False,
    }


def test_network_capabilities_advertise_gw_alloc_checker_when_overridden() -> None:
    class Checker(NetworkDriver):
        def gw_alloc_check(self, req: network.GwAllocCheckRequest) -> Any:
            return (True, False)

    driver = Checker()
    assert wire(driver.network_capabilities(Empty()))["GwAllocChecker"] is True
    ep = endpoint(NETWORK, "NetworkDriver.GwAllocCheck")
    req = network.GwAllocCheckRequest.model_validate_json(b'{"Options":{"a":true}}')
    assert wire(ep.reply(driver.gw_alloc_check(req), req)) == {"SkipIPv4": True, "SkipIPv6": False}


def test_network_scope_must_be_local_or_global() -> None:
    with pytest.raises(ValueError):
        network.CapabilitiesReply(scope="Local")


def test_create_endpoint_parses_interface_and_reply_sends_only_filled_fields() -> None:
    body = (
        b'{"NetworkID":"net1","EndpointID":"ep1",'
        b'"Interface":{"Address":"172.28.0.2/16","AddressIPv6":"","MacAddress":""},'
        b'"Options":{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}]}}\n'
    )
    req = network.CreateEndpointRequest.model_validate_json(body)
    assert req.interface is not None
    assert req.interface.address == "172.28.0.2/16"
    assert req.interface.mac_address == ""
    ep = endpoint(NETWORK, "NetworkDriver.CreateEndpoint")
    assert ep.subject(req) == "net=net1 ep=ep1"
    assert ep.lane is Lane.SLOW
    assert wire(ep.reply(None, req)) == {}
    mac = network.EndpointInterface(mac_address="6e:75:32:60:44:c9")
    assert wire(ep.reply(mac, req)) == {"Interface": {"MacAddress": "6e:75:32:60:44:c9"}}


def test_join_reply_exact_keys() -> None:
    req = network.JoinRequest.model_validate_json(
        b'{"NetworkID":"n","EndpointID":"e","SandboxKey":"/var/run/docker/netns/x","Options":null}'
    )
    assert req.sandbox_key == "/var/run/docker/netns/x"
    reply = network.JoinReply(
        interface_name=network.InterfaceName(src_name="veth1234", dst_prefix="eth"),
        gateway="172.28.0.1",
        static_routes=[
            network.StaticRoute(destination="10.9.0.0/16", next_hop="172.28.0.254"),
            network.StaticRoute(destination="10.8.0.0/16", route_type=network.RouteType.CONNECTED),
        ],
    )
    assert wire(reply) == {
        "InterfaceName": {"SrcName": "veth1234", "DstPrefix": "eth"},
        "Gateway": "172.28.0.1",
        "StaticRoutes": [
            {"Destination": "10.9.0.0/16", "RouteType": 0, "NextHop": "172.28.0.254"},
            {"Destination": "10.8.0.0/16", "RouteType": 1},
        ],
        "DisableGatewayService": False,
    }
    ep = endpoint(NETWORK, "NetworkDriver.Join")
    assert wire(ep.reply(network.InterfaceName(src_name="v"), req)) == {
        "InterfaceName": {"SrcName": "v", "DstPrefix": "eth"},
        "DisableGatewayService": False,
    }
    assert wire(network.JoinReply(gateway_ipv6="fd00::1")) == {
        "GatewayIPv6": "fd00::1",
        "DisableGatewayService": False,
    }


def test_endpoint_oper_info_always_sends_value() -> None:
    ep = endpoint(NETWORK, "NetworkDriver.EndpointOperInfo")
    req = network.EndpointRequest.model_validate_json(b'{"NetworkID":"n","EndpointID":"e"}')
    assert ep.lane is Lane.FAST
    assert wire(ep.reply(NetworkDriver().endpoint_oper_info(req), req)) == {"Value": {}}
    assert wire(ep.reply({"k": [1]}, req)) == {"Value": {"k": [1]}}


def test_allocate_network_reply_and_discovery_request() -> None:
    ep = endpoint(NETWORK, "NetworkDriver.AllocateNetwork")
    assert not ep.required
    assert wire(ep.reply({"vni": "4096"}, None)) == {"Options": {"vni": "4096"}}
    assert wire(ep.reply(None, None)) == {}
    req = network.DiscoveryRequest.model_validate_json(
        b'{"DiscoveryType":1,"DiscoveryData":{"Address":"10.0.0.2","BindAddress":"0.0.0.0",'
        b'"Self":true}}'
    )
    assert req.discovery_data is not None
    assert req.discovery_data.is_self
    assert endpoint(NETWORK, "NetworkDriver.DiscoverNew").subject(req) == "node=10.0.0.2"


def test_network_required_and_optional_endpoints() -> None:
    required = {ep.path.split(".")[1] for ep in NETWORK.endpoints if ep.required}
    assert required == {
        "GetCapabilities",
        "CreateNetwork",
        "DeleteNetwork",
        "CreateEndpoint",
        "EndpointOperInfo",
        "Join",
        "Leave",
        "DeleteEndpoint",
    }
    driver = NetworkDriver()
    for name in ("ProgramExternalConnectivity", "RevokeExternalConnectivity", "DiscoverNew"):
        assert not implemented(driver, endpoint(NETWORK, f"NetworkDriver.{name}"))


# --- IpamDriver ---------------------------------------------------------------------------------


def test_ipam_uses_error_key() -> None:
    assert IPAM.error_key == "Error"
    assert "Err" in IPAM.extra_error_keys
    assert wire(ipam.IpamReply(error="no space left")) == {"Error": "no space left"}
    assert wire(ipam.IpamReply()) == {}


def test_ipam_capabilities_reply_keys() -> None:
    ep = endpoint(IPAM, "IpamDriver.GetCapabilities")
    assert not ep.required
    assert ep.request is Empty
    assert wire(ep.reply(IpamDriver().ipam_capabilities(Empty()), Empty())) == {
        "RequiresMACAddress": False,
        "RequiresRequestReplay": False,
    }
    assert wire(ep.reply((True, True), Empty())) == {
        "RequiresMACAddress": True,
        "RequiresRequestReplay": True,
    }


def test_ipam_default_address_spaces() -> None:
    ep = endpoint(IPAM, "IpamDriver.GetDefaultAddressSpaces")
    assert ep.request is Empty
    assert wire(ep.reply(IpamDriver().get_default_address_spaces(Empty()), Empty())) == {
        "LocalDefaultAddressSpace": "LocalDefault",
        "GlobalDefaultAddressSpace": "GlobalDefault",
    }


def test_ipam_request_pool_round_trip() -> None:
    req = ipam.RequestPoolRequest.model_validate_json(
        b'{"AddressSpace":"LocalDefault","Pool":"","SubPool":"","Options":null,"V6":false}\n'
    )
    assert (req.address_space, req.pool, req.v6, req.options) == ("LocalDefault", "", False, None)
    ep = endpoint(IPAM, "IpamDriver.RequestPool")
    assert ep.subject(req) == "pool=*"
    assert wire(ep.reply(("LocalDefault/10.1.0.0/16", "10.1.0.0/16"), req)) == {
        "PoolID": "LocalDefault/10.1.0.0/16",
        "Pool": "10.1.0.0/16",
    }
    assert wire(ep.reply(("p", "10.1.0.0/16", {"k": "v"}), req)) == {
        "PoolID": "p",
        "Pool": "10.1.0.0/16",
        "Data": {"k": "v"},
    }


def test_ipam_request_address_gateway_and_reply() -> None:
    req = ipam.RequestAddressRequest.model_validate_json(
        b'{"PoolID":"p","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}'
    )
    assert req.is_gateway
    ep = endpoint(IPAM, "IpamDriver.RequestAddress")
    assert wire(ep.reply("10.1.0.1/16", req)) == {"Address": "10.1.0.1/16"}
    with pytest.raises(PluginError):
        ep.reply(None, req)
    plain = ipam.RequestAddressRequest.model_validate_json(b'{"PoolID":"p","Options":null}')
    assert not plain.is_gateway
    assert plain.mac_address is None
    release = ipam.ReleaseAddressRequest.model_validate_json(b'{"PoolID":"p","Address":"10.1.0.2"}')
    assert wire(endpoint(IPAM, "IpamDriver.ReleaseAddress").reply(None, release)) == {}


# --- authz --------------------------------------------------------------------------------------


def test_authz_request_parses_request_uri_and_decodes_body() -> None:
    body = base64.b64encode(b'{"Image":"busybox","HostConfig":{"Privileged":true}}').decode()
    raw = json.dumps(
        {
            "RequestMethod": "POST",
            "RequestUri": "/v1.47/containers/create?name=x",
            "RequestBody": body,
            "RequestHeaders": {"Content-Type": "application/json"},
            "Unknown": 1,
        }
    )
    req = authz.AuthzRequest.model_validate_json(raw)
    assert req.request_uri == "/v1.47/containers/create?name=x"
    assert req.path == "/v1.47/containers/create"
    assert req.user is None
    assert req.response_status_code is None
    assert req.json_body() == {"Image": "busybox", "HostConfig": {"Privileged": True}}
    assert endpoint(AUTHZ, "AuthZPlugin.AuthZReq").subject(req) == (
        "POST /v1.47/containers/create?name=x"
    )
    assert json.loads(req.wire())["RequestUri"] == "/v1.47/containers/create?name=x"


def test_authz_request_without_body_and_with_tls_user() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    req = authz.AuthzRequest.model_validate(
        {
            "User": "alice",
            "UserAuthNMethod": "TLS",
            "RequestMethod": "GET",
            "RequestUri": "/_ping",
            "RequestPeerCertificates": [base64.b64encode(pem.encode()).decode()],
        }
    )
    assert req.user_authn_method == "TLS"
    assert req.body == b""
    assert req.json_body() is None
    assert req.peer_certificates == [pem]


def test_authz_response_fields() -> None:
    req = authz.AuthzRequest.model_validate(
        {
            "RequestMethod": "GET",
            "RequestUri": "/v1.47/info",
            "ResponseStatusCode": 200,
            "ResponseBody": base64.b64encode(b'{"ID":"x"}').decode(),
            "ResponseHeaders": {"Content-Type": "application/json"},
        }
    )
    assert req.response_status_code == 200
    assert req.json_response() == {"ID": "x"}


def test_authz_reply_always_sends_allow() -> None:
    ep = endpoint(AUTHZ, "AuthZPlugin.AuthZReq")
    assert wire(ep.reply(True, None)) == {"Allow": True}
    assert wire(ep.reply(False, None)) == {"Allow": False}
    assert wire(ep.reply((False, "no privileged containers"), None)) == {
        "Allow": False,
        "Msg": "no privileged containers",
    }
    assert wire(authz.AuthzReply()) == {"Allow": False}
    assert wire(ep.reply(None, None))["Allow"] is False
    with pytest.raises(TypeError):
        ep.reply("yes", None)


def test_authz_endpoints_are_both_required() -> None:
    assert [(ep.path, ep.required) for ep in AUTHZ.endpoints] == [
        ("/AuthZPlugin.AuthZReq", True),
        ("/AuthZPlugin.AuthZRes", True),
    ]
    driver = AuthzPlugin()
    assert not any(implemented(driver, ep) for ep in AUTHZ.endpoints)


# --- LogDriver ----------------------------------------------------------------------------------

INFO = {
    "Config": {"mode": "non-blocking", "my-opt": "x"},
    "ContainerID": "a" * 64,
    "ContainerName": "/web",
    "ContainerEntrypoint": "/bin/sh",
    "ContainerArgs": ["-c", "..."],
    "ContainerImageID": "sha256:" + "b" * 64,
    "ContainerImageName": "nginx:latest",
    "ContainerCreated": "2026-01-02T03:04:05.123456789Z",
    "ContainerEnv": ["A=1"],
    "ContainerLabels": {"k": "v"},
    "LogPath": "",
    "DaemonName": "docker",
}


def test_start_logging_parses_info() -> None:
    raw = json.dumps({"File": "/run/docker/logging/" + "c" * 64, "Info": INFO}) + "\n"
    req = log.StartLoggingRequest.model_validate_json(raw)
    info = req.info
    assert info.config == {"mode": "non-blocking", "my-opt": "x"}
    assert info.container_id == "a" * 64
    assert info.container_image_id.startswith("sha256:")
    assert info.container_created == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert info.container_labels == {"k": "v"}
    assert endpoint(LOG, "LogDriver.StartLogging").subject(req) == (
        "ctr=aaaaaaaaaaaa fifo=cccccccccccc"
    )
    dumped = json.loads(req.wire())["Info"]
    assert set(dumped) == set(INFO)
    assert dumped["ContainerCreated"] == "2026-01-02T03:04:05.123456Z"


def test_log_info_tolerates_nulls_and_missing_fields() -> None:
    info = log.Info.model_validate(
        {"Config": None, "ContainerLabels": None, "ContainerEnv": None, "ContainerCreated": ""}
    )
    assert (info.config, info.container_labels, info.container_env) == ({}, {}, [])
    assert info.container_created is None
    assert log.StopLoggingRequest.model_validate_json(b'{"File":"/run/docker/logging/x"}').file


def test_log_capabilities_are_wrapped_in_cap() -> None:
    ep = endpoint(LOG, "LogDriver.Capabilities")
    assert ep.request is Empty
    assert not ep.required
    assert wire(ep.reply(True, Empty())) == {"Cap": {"ReadLogs": True}}
    assert wire(ep.reply(LogDriver().log_capabilities(Empty()), Empty())) == {
        "Cap": {"ReadLogs": False}
    }

    class Reader(LogDriver):
        def read_logs(self, req: log.ReadLogsRequest) -> Any:
            return iter([log.frame(b"x")])

    assert wire(ep.reply(Reader().log_capabilities(Empty()), Empty())) == {
        "Cap": {"ReadLogs": True}
    }


def test_read_logs_request_uses_config_and_zero_time_means_unset() -> None:
    raw = json.dumps(
        {
            "Info": INFO,
            "Config": {
                "Since": "0001-01-01T00:00:00Z",
                "Until": "2026-01-02T03:04:05Z",
                "Tail": -1,
                "Follow": True,
            },
        }
    )
    req = log.ReadLogsRequest.model_validate_json(raw)
    assert req.config.since is None
    assert req.config.until == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (req.config.tail, req.config.follow) == (-1, True)
    assert req.info.container_name == "/web"


def test_read_logs_streams_the_driver_result_unchanged() -> None:
    ep = endpoint(LOG, "LogDriver.ReadLogs")
    assert ep.streams
    assert not ep.required

    def gen() -> Iterator[bytes]:
        yield log.frame(b"a")

    async def agen() -> AsyncIterator[bytes]:
        yield log.frame(b"a")

    sync_stream = gen()
    async_stream = agen()
    assert ep.reply(sync_stream, None) is sync_stream
    assert ep.reply(async_stream, None) is async_stream
    assert ep.reply(bytearray(b"\x00\x00\x00\x00"), None) == b"\x00\x00\x00\x00"
    with pytest.raises(TypeError):
        ep.reply("text", None)
    with pytest.raises(TypeError):
        ep.reply(None, None)


def test_frame_is_big_endian_length_prefix() -> None:
    assert log.frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert log.frame(b"") == b"\x00\x00\x00\x00"
    assert log.frame(b"x" * 258)[:4] == b"\x00\x00\x01\x02"


def test_frame_reader_round_trips_across_arbitrary_chunks() -> None:
    payloads = [b"", b"hello", b"\x00\x01" * 300, b"last"]
    stream = b"".join(log.frame(p) for p in payloads)
    for size in (1, 3, 4, 5, 7, len(stream)):
        reader = log.FrameReader()
        out: list[bytes] = []
        for i in range(0, len(stream), size):
            out += reader.feed(stream[i : i + size])
        assert out == payloads
        assert reader.pending == 0
        reader.close()


def test_frame_reader_rejects_oversized_and_truncated_records() -> None:
    reader = log.FrameReader(max_size=10)
    with pytest.raises(log.FrameError):
        reader.feed(log.frame(b"x" * 11))
    truncated = log.FrameReader()
    assert truncated.feed(log.frame(b"abc")[:-1]) == []
    assert truncated.pending == 6
    with pytest.raises(ValueError):
        truncated.close()


# --- MetricsCollector --------------------------------------------------------------------------


def test_metrics_endpoints_take_empty_bodies_and_reply_empty_object() -> None:
    assert METRICS.implements == "MetricsCollector"
    for ep in METRICS.endpoints:
        assert ep.request is Empty
        assert wire(ep.reply(None, Empty())) == {}
    assert Empty.model_validate_json(b"{}") == Empty()
    assert metrics.METRICS_SOCKET == "/run/docker/metrics.sock"
    driver = MetricsCollector()
    assert not implemented(driver, endpoint(METRICS, "MetricsCollector.StartMetrics"))
    assert implemented(driver, endpoint(METRICS, "MetricsCollector.StopMetrics"))


# --- Volume (re-exported) -----------------------------------------------------------------------


def test_volume_is_reexported() -> None:
    assert wire(Volume(name="v1")) == {"Name": "v1"}
    assert VOLUME.implements == "VolumeDriver"
