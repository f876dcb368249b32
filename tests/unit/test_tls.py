"""TLS over TCP: the server announces itself in a ``.json`` file that dockerd (and our client)
can use as written, and with a client CA it admits only clients holding a certificate from it
(plugin-protocol.md §1.3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stubs import FixedVolumes

from dockplug.client import PluginClient
from dockplug.server import discovery
from dockplug.server.runner import TLSSettings
from dockplug.testing.servers import ThreadedPlugin

Serve = Callable[..., ThreadedPlugin]


class Volumes(FixedVolumes):
    listed = ["over-tls"]


def serve_tls(serve_plugin: Serve, spec_dir: Path, tls: TLSSettings) -> ThreadedPlugin:
    return serve_plugin(Volumes(), name="tlsp", tcp="127.0.0.1:0", tls=tls, spec_dir=spec_dir)


def announced(spec_dir: Path) -> discovery.PluginAddress:
    return discovery.read_json(spec_dir / "tlsp.json", "tlsp")


@pytest.fixture
def server_tls(certificates: Any) -> TLSSettings:
    """A server certificate for 127.0.0.1; the .json tells dockerd which CA vouches for it."""
    return TLSSettings(
        cert=certificates.server_cert, key=certificates.server_key, ca=certificates.ca
    )


def test_client_using_the_announced_json_verifies_the_server(
    serve_plugin: Serve, short_tmp: Path, certificates: Any, server_tls: TLSSettings
) -> None:
    plugin = serve_tls(serve_plugin, short_tmp, server_tls)
    address = announced(short_tmp)
    assert plugin.url.startswith("https://127.0.0.1:")
    assert address.url == plugin.url
    assert address.tls == discovery.TLSOptions(ca_file=str(certificates.ca))
    with PluginClient(address) as client:
        assert client.call("Plugin.Activate").json == {"Implements": ["VolumeDriver"]}
        assert client.call("VolumeDriver.List", {}).json == {"Volumes": [{"Name": "over-tls"}]}


def test_client_trusting_another_ca_refuses_the_server(
    serve_plugin: Serve, short_tmp: Path, certificates: Any, server_tls: TLSSettings
) -> None:
    plugin = serve_tls(serve_plugin, short_tmp, server_tls)
    trusting_other_ca = discovery.TLSOptions(ca_file=str(certificates.other_ca))
    wrong = discovery.PluginAddress("tlsp", plugin.url, "test", trusting_other_ca)
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"), PluginClient(wrong) as client:
        client.call("Plugin.Activate")


def test_without_a_ca_the_json_tells_dockerd_to_skip_verification(
    serve_plugin: Serve, short_tmp: Path, certificates: Any
) -> None:
    tls = TLSSettings(cert=certificates.server_cert, key=certificates.server_key)
    serve_tls(serve_plugin, short_tmp, tls)
    address = announced(short_tmp)
    assert address.tls is not None and address.tls.insecure_skip_verify
    with PluginClient(address) as client:
        assert client.call("Plugin.Activate").status == 200


def test_plain_http_client_gets_no_answer_from_a_tls_port(
    serve_plugin: Serve, short_tmp: Path, certificates: Any, server_tls: TLSSettings
) -> None:
    plugin = serve_tls(serve_plugin, short_tmp, server_tls)
    plain = plugin.url.replace("https://", "tcp://")
    with PluginClient(plain, timeout=5) as client:
        try:
            reply = client.call("Plugin.Activate")
        except OSError:
            return
    assert reply.status != 200  # the TLS handshake fails: plain HTTP gets no data back


@pytest.fixture
def mutual_tls(certificates: Any) -> TLSSettings:
    """Server requiring client certificates from the CA; the .json hands dockerd its client
    certificate."""
    return TLSSettings(
        cert=certificates.server_cert,
        key=certificates.server_key,
        ca=certificates.ca,
        client_ca=certificates.ca,
        client_cert=certificates.client_cert,
        key_for_client=certificates.client_key,
    )


def test_client_certificate_from_the_announced_json_is_accepted(
    serve_plugin: Serve, short_tmp: Path, certificates: Any, mutual_tls: TLSSettings
) -> None:
    serve_tls(serve_plugin, short_tmp, mutual_tls)
    address = announced(short_tmp)
    assert address.tls == discovery.TLSOptions(
        ca_file=str(certificates.ca),
        cert_file=str(certificates.client_cert),
        key_file=str(certificates.client_key),
    )
    with PluginClient(address) as client:
        assert client.call("Plugin.Activate").json == {"Implements": ["VolumeDriver"]}
        assert client.call("VolumeDriver.Get", {"Name": "x"}).json == {"Volume": {"Name": "x"}}


def test_client_without_a_certificate_is_refused(
    serve_plugin: Serve, short_tmp: Path, certificates: Any, mutual_tls: TLSSettings
) -> None:
    plugin = serve_tls(serve_plugin, short_tmp, mutual_tls)
    anonymous = discovery.PluginAddress(
        "tlsp", plugin.url, "test", discovery.TLSOptions(ca_file=str(certificates.ca))
    )
    with pytest.raises(OSError), PluginClient(anonymous, timeout=5) as client:
        client.call("Plugin.Activate")
    # the refusal hurt nobody else
    with PluginClient(announced(short_tmp)) as client:
        assert client.call("Plugin.Activate").status == 200


def test_client_with_a_certificate_from_another_ca_is_refused(
    serve_plugin: Serve, short_tmp: Path, certificates: Any, mutual_tls: TLSSettings
) -> None:
    plugin = serve_tls(serve_plugin, short_tmp, mutual_tls)
    # the other CA's own self-signed certificate: an identity the server's CA never vouched for
    stranger = discovery.PluginAddress(
        "tlsp",
        plugin.url,
        "test",
        discovery.TLSOptions(
            ca_file=str(certificates.ca),
            cert_file=str(certificates.other_ca),
            key_file=str(certificates.other_ca.with_suffix(".key")),
        ),
    )
    with pytest.raises(OSError), PluginClient(stranger, timeout=5) as client:
        client.call("Plugin.Activate")
