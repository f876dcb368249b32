"""Every failure becomes a JSON error reply with the right status, and nothing a driver or a
client does takes the server down or prints a secret (plugin-protocol.md §1.6)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stubs import FixedNetwork

import dockplug
from dockplug.client import PluginClient
from dockplug.errors import ConfigError
from dockplug.protocol.base import Empty
from dockplug.protocol.volume import CreateRequest, MountRequest, NameRequest
from dockplug.server.app import PluginApp
from dockplug.testing.servers import SubprocessPlugin, ThreadedPlugin

REPO = Path(__file__).resolve().parents[2]
HELLO = f"{REPO}/examples/hello_volume.py:HelloDriver"

Serve = Callable[..., ThreadedPlugin]
Connect = Callable[..., Any]  # the raw_connection fixture (conftest.py)

SECRET = "tr0ub4dor-and-3-horses"  # registered with add_secret below; must never be printed


class Faulty(dockplug.VolumeDriver):
    """A volume driver whose Create raises whatever the test puts in ``self.error``."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.created: list[str] = []

    def create(self, req: CreateRequest) -> None:
        if self.error is not None:
            raise self.error
        self.created.append(req.name)

    def remove(self, req: NameRequest) -> None:
        pass

    def mount(self, req: MountRequest) -> str:
        return "/mnt"

    def unmount(self, req: MountRequest) -> None:
        pass

    def path(self, req: NameRequest) -> str:
        return "/mnt"

    def get(self, req: NameRequest) -> dockplug.Volume:
        raise dockplug.VolumeNotFound(req.name)

    def list(self, req: Empty) -> list[dockplug.Volume]:
        return []


@pytest.fixture
def driver() -> Faulty:
    return Faulty()


@pytest.fixture
def plugin(serve_plugin: Serve, driver: Faulty) -> ThreadedPlugin:
    return serve_plugin(driver)


def still_serving(plugin: ThreadedPlugin) -> bool:
    with plugin.client() as client:
        return client.call("VolumeDriver.List", {}).json == {"Volumes": []}


# --- driver errors ------------------------------------------------------------------------


def test_plugin_error_becomes_500_with_its_message(plugin: ThreadedPlugin, driver: Faulty) -> None:
    driver.error = dockplug.PluginError("disk full")
    reply = plugin.client().call("VolumeDriver.Create", {"Name": "v"})
    assert reply.status == 500
    assert reply.json == {"Err": "disk full"}


def test_volume_not_found_is_500_never_404(plugin: ThreadedPlugin) -> None:
    # 404 means "endpoint not implemented" to dockerd
    reply = plugin.client().call("VolumeDriver.Get", {"Name": "ghost"})
    assert reply.status == 500
    assert reply.json == {"Err": "no such volume: ghost"}


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (ValueError("size must be positive"), "size must be positive"),
        (RuntimeError("backend exploded"), "RuntimeError: backend exploded"),
        (KeyError("pool"), "'pool'"),
        (ZeroDivisionError(), "ZeroDivisionError"),
    ],
)
def test_driver_bug_becomes_500_and_the_server_keeps_serving(
    plugin: ThreadedPlugin, driver: Faulty, error: Exception, text: str
) -> None:
    driver.error = error
    with plugin.client() as client:
        for _ in range(3):
            reply = client.call("VolumeDriver.Create", {"Name": "v"})
            assert reply.status == 500
            assert reply.json["Err"] == text
    assert still_serving(plugin)


# --- bad requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"Name": "v"', b"{Name: v}", b"not json at all\n", b'{"Name":"v"}}', b"\xff\xfe{}"],
)
def test_malformed_json_is_400_saying_so(plugin: ThreadedPlugin, body: bytes) -> None:
    reply = plugin.client().call("VolumeDriver.Create", raw=body)
    assert reply.status == 400
    assert "malformed JSON" in reply.json["Err"]
    assert "VolumeDriver.Create" in reply.json["Err"]
    assert still_serving(plugin)


@pytest.mark.parametrize("body", [b"{}\n", b'{"Opts":{}}\n', b"null\n", b""])
def test_missing_required_field_is_400_naming_it(plugin: ThreadedPlugin, body: bytes) -> None:
    reply = plugin.client().call("VolumeDriver.Create", raw=body)
    assert reply.status == 400
    assert "missing required field 'Name'" in reply.json["Err"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"Name": "v", "Opts": {"size": 10}}, "Opts.size"),
        ({"Name": "v", "Opts": {"ro": True}}, "Opts.ro"),
        ({"Name": "v", "Opts": ["a=b"]}, "Opts"),
        ({"Name": 42}, "Name"),
        ({"Name": None}, "Name"),
    ],
)
def test_wrong_field_type_is_400_naming_the_field(
    plugin: ThreadedPlugin, driver: Faulty, body: Any, field: str
) -> None:
    reply = plugin.client().call("VolumeDriver.Create", body)
    assert reply.status == 400
    assert f"'{field}'" in reply.json["Err"]
    assert driver.created == []


@pytest.mark.parametrize("body", [b'[{"Name":"v"}]\n', b"[]", b'"v"', b"42"])
def test_body_that_is_not_a_json_object_is_400(plugin: ThreadedPlugin, body: bytes) -> None:
    reply = plugin.client().call("VolumeDriver.Create", raw=body)
    assert reply.status == 400
    assert "JSON object" in reply.json["Err"]


def test_body_over_the_limit_is_413_and_the_server_keeps_serving(plugin: ThreadedPlugin) -> None:
    plugin.server.app.body_limit = 4096
    with plugin.client() as client:
        reply = client.call("VolumeDriver.Create", {"Name": "v", "Opts": {"x": "y" * 100_000}})
        assert reply.status == 413
        assert "4096 byte limit" in reply.json["Err"]
        assert client.call("VolumeDriver.Create", {"Name": "small"}).status == 200
    assert still_serving(plugin)


def test_body_limit_is_a_constructor_setting_of_the_app(driver: Faulty) -> None:
    app = PluginApp(driver, body_limit=1234)
    try:
        assert app.body_limit == 1234
    finally:
        app.close()


# --- endpoints that do not exist ------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["Foo.Bar", "VolumeDriver.Resize", "", "VolumeDriver.list"])
def test_unknown_endpoint_is_404_with_err(plugin: ThreadedPlugin, endpoint: str) -> None:
    reply = plugin.client().call(endpoint, {})
    assert reply.status == 404
    assert "not implemented" in reply.json["Err"]
    assert "VolumeDriver" in reply.json["Err"]  # says what the plugin does implement


def test_endpoint_of_a_protocol_not_implemented_is_404(plugin: ThreadedPlugin) -> None:
    reply = plugin.client().call("NetworkDriver.Join", {"NetworkID": "n", "EndpointID": "e"})
    assert reply.status == 404
    assert reply.json["Err"].startswith("NetworkDriver.Join is not implemented")


@pytest.mark.parametrize(
    "endpoint",
    [
        "NetworkDriver.ProgramExternalConnectivity",
        "NetworkDriver.RevokeExternalConnectivity",
        "NetworkDriver.AllocateNetwork",
    ],
)
def test_optional_endpoint_not_overridden_is_404(serve_plugin: Serve, endpoint: str) -> None:
    # dockerd reads exactly this 404 as "optional endpoint not implemented"
    reply = (
        serve_plugin(FixedNetwork()).client().call(endpoint, {"NetworkID": "n", "EndpointID": "e"})
    )
    assert reply.status == 404
    assert endpoint in reply.json["Err"]


def test_get_instead_of_post_is_an_error_reply(
    plugin: ThreadedPlugin, raw_connection: Connect
) -> None:
    conn = raw_connection(plugin.url)
    conn.send(b"GET /VolumeDriver.List HTTP/1.1\r\nHost: \r\n\r\n")
    reply = conn.read_reply()
    assert 400 <= reply.status < 500
    assert reply.status != 404
    assert "POST" in reply.json["Err"]
    assert conn.post("/VolumeDriver.List", b"{}\n").status == 200  # same connection
    assert still_serving(plugin)


# --- drivers that cannot be served ----------------------------------------------------------


class NoMount(dockplug.VolumeDriver):
    def create(self, req: Any) -> None:
        pass

    def remove(self, req: Any) -> None:
        pass

    def unmount(self, req: Any) -> None:
        pass

    def path(self, req: Any) -> str:
        return "/"

    def get(self, req: Any) -> None:
        pass

    def list(self, req: Any) -> list[Any]:
        return []


def test_driver_missing_a_required_method_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"NoMount implements VolumeDriver .*: mount"):
        PluginApp(NoMount())


def test_driver_missing_a_required_method_never_starts_a_server(short_tmp) -> None:
    with pytest.raises(ConfigError, match="mount"):
        ThreadedPlugin(NoMount(), socket=short_tmp / "p.sock")
    assert not (short_tmp / "p.sock").exists()


# --- IPAM ---------------------------------------------------------------------------------


class Pools(dockplug.IpamDriver):
    def request_pool(self, req: Any) -> Any:
        raise dockplug.PluginError("no pool left")

    def release_pool(self, req: Any) -> None:
        pass

    def request_address(self, req: Any) -> Any:
        raise RuntimeError("allocator crashed")

    def release_address(self, req: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("endpoint", "body", "message"),
    [
        ("IpamDriver.RequestPool", {"AddressSpace": "LocalDefault"}, "no pool left"),
        ("IpamDriver.RequestAddress", {"PoolID": "p"}, "RuntimeError: allocator crashed"),
        ("IpamDriver.RequestAddress", {"Address": "10.0.0.1"}, "missing required field 'PoolID'"),
    ],
)
def test_ipam_errors_carry_both_error_and_err(
    serve_plugin: Serve, endpoint: str, body: Any, message: str
) -> None:
    reply = serve_plugin(Pools()).client().call(endpoint, body)
    assert reply.status in (400, 500)
    assert reply.json["Error"] == reply.json["Err"]
    assert message in reply.json["Err"]


# --- a slow driver method -----------------------------------------------------------------


class StuckGet(Faulty):
    """Get blocks (up to 60 s) until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def get(self, req: NameRequest) -> dockplug.Volume:
        self.entered.set()
        self.release.wait(60)
        return dockplug.Volume(name=req.name)


def test_a_sync_method_taking_a_minute_does_not_block_other_endpoints(serve_plugin: Serve) -> None:
    driver = StuckGet()
    plugin = serve_plugin(driver)
    replies: list[Any] = []
    stuck = threading.Thread(
        target=lambda: replies.append(
            plugin.client(timeout=70).call("VolumeDriver.Get", {"Name": "s"})
        )
    )
    stuck.start()
    try:
        assert driver.entered.wait(5)
        with plugin.client(timeout=2) as client:
            for endpoint, body in [
                ("Plugin.Activate", None),
                ("VolumeDriver.List", {}),
                ("VolumeDriver.Capabilities", {}),
                ("VolumeDriver.Path", {"Name": "p"}),
                ("VolumeDriver.Create", {"Name": "c"}),
                ("VolumeDriver.Mount", {"Name": "c", "ID": "1"}),
            ]:
                started = time.perf_counter()
                assert client.call(endpoint, body).status == 200
                assert time.perf_counter() - started < 0.5, endpoint
    finally:
        driver.release.set()
        stuck.join(10)
    assert replies[0].json == {"Volume": {"Name": "s"}}


# --- secrets ------------------------------------------------------------------------------


class Leaky(Faulty):
    """Puts a registered secret into every kind of error it can produce."""

    def create(self, req: CreateRequest) -> None:
        kind = req.options.get("fail")
        if kind == "plugin":
            raise dockplug.PluginError(f"login with {SECRET} refused")
        if kind == "value":
            raise ValueError(f"bad password {SECRET}")
        if kind == "runtime":
            raise RuntimeError(f"ssh -p {SECRET} exited 255")

    def mount(self, req: MountRequest) -> str:
        raise OSError(f"mount.cifs: password={SECRET}")


@pytest.mark.parametrize("debug", [False, True])
def test_no_reply_or_log_line_shows_a_registered_secret(
    serve_plugin: Serve, capfd: pytest.CaptureFixture[str], debug: bool
) -> None:
    dockplug.add_secret(SECRET)
    plugin = serve_plugin(Leaky(), debug=debug)
    replies = []
    with plugin.client() as client:
        for kind in ("plugin", "value", "runtime"):
            opts = {"fail": kind, "password": SECRET}
            replies.append(client.call("VolumeDriver.Create", {"Name": "v", "Opts": opts}))
        replies.append(client.call("VolumeDriver.Mount", {"Name": "v", "ID": "1"}))
        replies.append(client.call("VolumeDriver.Get", {"Name": f"x-{SECRET}"}))
        replies.append(client.call("VolumeDriver.Create", {"Name": 1, "Opts": {"k": SECRET}}))
    plugin.stop()
    for reply in replies:
        assert reply.status in (400, 500)
        assert SECRET not in reply.raw.decode()
        assert "********" in reply.json["Err"] or reply.status == 400
    out, err = capfd.readouterr()
    assert "VolumeDriver.Create" in out  # the request lines were written...
    if debug:
        assert "Traceback" in err  # ...and in debug mode the driver bug's traceback...
    assert SECRET not in out + err  # ...without the secret


def test_debug_body_logging_masks_password_like_keys(
    serve_plugin: Serve, capfd: pytest.CaptureFixture[str]
) -> None:
    plugin = serve_plugin(Faulty(), debug=True)
    opts = {
        "password": "pw-value-1",
        "sshkey_passphrase": "pw-value-2",
        "api_token": "pw-value-3",
        "client_secret": "pw-value-4",
        "key": "pw-value-5",
        "size": "10G",
    }
    assert plugin.client().call("VolumeDriver.Create", {"Name": "v", "Opts": opts}).status == 200
    plugin.stop()
    out, err = capfd.readouterr()
    body_lines = [line for line in out.splitlines() if " < " in line]
    assert body_lines, out
    assert "10G" in body_lines[0]  # bodies are shown in debug mode...
    assert "pw-value" not in out + err  # ...with secret-looking options masked


def test_debug_flag_of_serve_masks_password_like_options(short_tmp: Path) -> None:
    path = short_tmp / "d.sock"
    plugin = SubprocessPlugin(
        ["serve", HELLO, "-c", f"base={short_tmp / 'vols'}", "--name", "dbg",
         "--socket", str(path), "--announce", "none", "--debug"],
        wait_for=path,
    ).start()  # fmt: skip
    try:
        with PluginClient(str(path)) as client:
            opts = {"password": "pw-in-cli-1", "Passphrase": "pw-in-cli-2", "size": "3G"}
            assert client.call("VolumeDriver.Create", {"Name": "v", "Opts": opts}).status == 200
    finally:
        assert plugin.stop() == 0
    assert '"size":"3G"' in plugin.output
    assert '"password":"********"' in plugin.output
    assert "pw-in-cli" not in plugin.output


# --- clients that give up ---------------------------------------------------------------------


class SlowMount(Faulty):
    def __init__(self) -> None:
        super().__init__()
        self.finished = threading.Event()

    def mount(self, req: MountRequest) -> str:
        time.sleep(0.5)
        self.finished.set()
        return "/mnt"


def test_client_hanging_up_mid_call_does_not_disturb_the_server(
    serve_plugin: Serve, raw_connection: Connect
) -> None:
    driver = SlowMount()
    plugin = serve_plugin(driver)
    impatient = raw_connection(plugin.url)
    impatient.send_request("/VolumeDriver.Mount", b'{"Name":"m","ID":"1"}\n')
    time.sleep(0.1)
    impatient.close()
    assert still_serving(plugin)
    assert driver.finished.wait(5)
    assert still_serving(plugin)
