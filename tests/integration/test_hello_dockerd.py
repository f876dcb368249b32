"""The Hello World example (examples/hello_volume.py) driven by a real dockerd, once per way
dockerd can find a legacy plugin: a socket in /run/docker/plugins, a ``.spec`` naming a unix
socket elsewhere or a TCP address, and a ``.json`` carrying TLS settings (plugin-protocol.md
§1.2-1.3).

dockerd caches an activated legacy plugin for the rest of its life (§1.10), so every test serves
the driver under a fresh name from the ``plugin_name`` fixture.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dockplug.cli.serve import import_file
from dockplug.server import discovery
from dockplug.server.runner import TLSSettings
from dockplug.testing.dockerd import Dockerd
from dockplug.testing.pki import Certificates
from dockplug.testing.servers import ThreadedPlugin, wait_until

pytestmark = pytest.mark.dockerd

Serve = Callable[..., ThreadedPlugin]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello_volume.py"
SPEC_DIR = discovery.SPEC_DIRS[0]  # /etc/docker/plugins
MOUNT_ID = re.compile(r"[0-9a-f]{64}")


HelloDriver: Any = import_file(EXAMPLE).HelloDriver


class RecordingHello(HelloDriver):  # type: ignore[misc, valid-type]
    """The example driver, unchanged, plus a log of the calls dockerd made."""

    def __init__(self, base: str) -> None:
        super().__init__(base)
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def _record(self, method: str, req: Any) -> None:
        with self._lock:
            self.calls.append((method, req))

    def of(self, method: str) -> list[Any]:
        return [req for _, req in self.sequence(method)]

    def sequence(self, *methods: str) -> list[tuple[str, Any]]:
        """The calls to these methods, in the order they arrived."""
        with self._lock:
            return [(m, req) for m, req in self.calls if m in methods]

    def create(self, req: Any) -> Any:
        self._record("create", req)
        return super().create(req)

    def mount(self, req: Any) -> Any:
        self._record("mount", req)
        return super().mount(req)

    def unmount(self, req: Any) -> Any:
        self._record("unmount", req)
        return super().unmount(req)

    def get(self, req: Any) -> Any:
        self._record("get", req)
        return super().get(req)


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _check_mounts_balanced(driver: RecordingHello, vol: str) -> None:
    """Every Mount had a 64-hex ID and was undone by an Unmount with the same ID, in order.

    ``docker run -v VOL:/data`` mounts more than once: at container create (to copy the image's
    own /data into the empty volume) and for the run, each time with a fresh ID.
    """
    # --rm returns once the container is removed, which comes after its volumes are unmounted;
    # wait a little anyway rather than depend on that
    wait_until(lambda: len(driver.of("unmount")) >= len(driver.of("mount")), 10.0, 0.05)
    calls = driver.sequence("mount", "unmount")
    assert calls, "dockerd never mounted the volume"
    held: dict[str, int] = {}
    for method, req in calls:
        assert req.name == vol
        assert MOUNT_ID.fullmatch(req.id), req.id
        if method == "mount":
            held[req.id] = held.get(req.id, 0) + 1
        else:
            assert held.get(req.id, 0) > 0, f"Unmount of {req.id} without a Mount: {calls}"
            held[req.id] -= 1
    assert not any(held.values()), f"left mounted: {calls}"


def _inspect(dockerd: Dockerd, volume: str) -> dict[str, Any]:
    data = json.loads(dockerd.docker("volume", "inspect", volume).stdout)
    assert isinstance(data, list) and len(data) == 1
    assert isinstance(data[0], dict)
    return data[0]


@pytest.fixture
def base(short_tmp: Path) -> Path:
    """Where the example driver keeps its volume folders."""
    return short_tmp / "vols"


@pytest.fixture
def volumes(dockerd: Dockerd, serve_plugin: Serve) -> Iterator[list[str]]:
    """Volumes appended here and not yet removed by ``_remove`` are force-removed after the test,
    while the plugin still serves (this fixture depends on ``serve_plugin``, so its teardown runs
    first).

    Only names dockerd knows are removed: for an unknown name dockerd probes every volume driver
    it ever activated, and each one that has gone away costs ~15 s of retries (§1.10).
    """
    names: list[str] = []
    yield names
    for name in names:
        dockerd.docker("volume", "rm", "-f", name, check=False)


def _remove(dockerd: Dockerd, vol: str, volumes: list[str]) -> None:
    dockerd.docker("volume", "rm", vol)
    volumes.remove(vol)


def _listed(dockerd: Dockerd, driver: str) -> list[str]:
    """``docker volume ls`` for one driver: ``"DRIVER NAME"`` lines. The filter matters: an
    unfiltered ls asks every driver dockerd ever activated, gone ones included."""
    out = dockerd.docker(
        "volume", "ls", "--filter", f"driver={driver}", "--format", "{{.Driver}} {{.Name}}"
    ).stdout
    return out.splitlines()


def _create_inspect_remove(dockerd: Dockerd, name: str, base: Path, volumes: list[str]) -> None:
    """The common round trip: create with an option, list, inspect, remove."""
    vol = f"{name}-v{_uid()}"
    out = dockerd.docker("volume", "create", "-d", name, "-o", "a=1", vol).stdout
    volumes.append(vol)
    assert out.strip() == vol
    assert (base / vol).is_dir()
    assert _listed(dockerd, name) == [f"{name} {vol}"]
    info = _inspect(dockerd, vol)
    assert info["Driver"] == name
    assert info["Mountpoint"] == str(base / vol)
    _remove(dockerd, vol, volumes)
    assert not (base / vol).exists()
    assert _listed(dockerd, name) == []


# --- discovery ---------------------------------------------------------------------------------


def test_socket_in_run_docker_plugins(
    dockerd: Dockerd, serve_plugin: Serve, plugin_name: str, base: Path, volumes: list[str]
) -> None:
    sock = discovery.SOCKET_DIR / f"{plugin_name}.sock"
    plugin = serve_plugin(HelloDriver(str(base)), name=plugin_name, socket=sock, announce="none")
    assert plugin.url == f"unix://{sock}"
    assert discovery.find(plugin_name).url == plugin.url

    vol = f"{plugin_name}-v1"
    dockerd.docker("volume", "create", "-d", plugin_name, "-o", "a=1", vol)
    volumes.append(vol)
    assert (base / vol).is_dir()
    assert _listed(dockerd, plugin_name) == [f"{plugin_name} {vol}"]

    info = _inspect(dockerd, vol)
    assert info["Driver"] == plugin_name
    assert info["Name"] == vol
    assert Path(info["Mountpoint"]).parent == base

    _remove(dockerd, vol, volumes)
    assert not (base / vol).exists()
    assert _listed(dockerd, plugin_name) == []

    plugin.stop()
    assert not sock.exists()


def test_spec_file_naming_a_unix_socket_elsewhere(
    dockerd: Dockerd,
    serve_plugin: Serve,
    plugin_name: str,
    short_tmp: Path,
    base: Path,
    volumes: list[str],
) -> None:
    sock = short_tmp / f"{plugin_name}.sock"
    spec = SPEC_DIR / f"{plugin_name}.spec"
    plugin = serve_plugin(
        HelloDriver(str(base)), name=plugin_name, socket=sock, spec_dir=SPEC_DIR, announce="spec"
    )
    assert spec.read_text().strip() == f"unix://{sock}"
    assert not (discovery.SOCKET_DIR / f"{plugin_name}.sock").exists()
    _create_inspect_remove(dockerd, plugin_name, base, volumes)
    plugin.stop()
    assert not spec.exists(), "the server removes its .spec file when it stops"
    assert not sock.exists()


def test_spec_file_naming_a_tcp_address(
    dockerd: Dockerd, serve_plugin: Serve, plugin_name: str, base: Path, volumes: list[str]
) -> None:
    spec = SPEC_DIR / f"{plugin_name}.spec"
    plugin = serve_plugin(
        HelloDriver(str(base)),
        name=plugin_name,
        tcp="127.0.0.1:0",
        spec_dir=SPEC_DIR,
        announce="spec",
    )
    assert plugin.url.startswith("tcp://127.0.0.1:")
    assert spec.read_text().strip() == plugin.url
    _create_inspect_remove(dockerd, plugin_name, base, volumes)
    plugin.stop()
    assert not spec.exists()


def test_json_file_with_tls_and_client_certificates(
    dockerd: Dockerd,
    serve_plugin: Serve,
    plugin_name: str,
    base: Path,
    volumes: list[str],
    certificates: Certificates,
) -> None:
    tls = TLSSettings(
        cert=certificates.server_cert,
        key=certificates.server_key,
        ca=certificates.ca,
        client_ca=certificates.ca,
        client_cert=certificates.client_cert,
        key_for_client=certificates.client_key,
    )
    announced = SPEC_DIR / f"{plugin_name}.json"
    plugin = serve_plugin(
        HelloDriver(str(base)),
        name=plugin_name,
        tcp="127.0.0.1:0",
        tls=tls,
        spec_dir=SPEC_DIR,
        announce="json",
    )
    assert plugin.url.startswith("https://127.0.0.1:")
    body = json.loads(announced.read_text())
    assert body["Addr"] == plugin.url
    assert body["TLSConfig"] == {
        "InsecureSkipVerify": False,
        "CAFile": str(certificates.ca),
        "CertFile": str(certificates.client_cert),
        "KeyFile": str(certificates.client_key),
    }
    assert not (SPEC_DIR / f"{plugin_name}.spec").exists()
    _create_inspect_remove(dockerd, plugin_name, base, volumes)
    plugin.stop()
    assert not announced.exists()


# --- containers --------------------------------------------------------------------------------


def test_container_writes_into_the_volume_folder(
    dockerd: Dockerd,
    busybox_image: str,
    serve_plugin: Serve,
    plugin_name: str,
    base: Path,
    volumes: list[str],
) -> None:
    driver = RecordingHello(str(base))
    serve_plugin(driver, name=plugin_name, socket=discovery.SOCKET_DIR / f"{plugin_name}.sock")
    vol = f"{plugin_name}-data"
    dockerd.docker("volume", "create", "-d", plugin_name, vol)
    volumes.append(vol)
    dockerd.docker(
        "run", "--rm", "-v", f"{vol}:/data", busybox_image,
        "sh", "-c", "echo hello > /data/f",
    )  # fmt: skip
    assert (base / vol / "f").read_text() == "hello\n"

    _check_mounts_balanced(driver, vol)
    _remove(dockerd, vol, volumes)
    assert not (base / vol).exists()


def test_implicit_create_by_docker_run_sends_null_opts(
    dockerd: Dockerd,
    busybox_image: str,
    serve_plugin: Serve,
    plugin_name: str,
    base: Path,
    volumes: list[str],
) -> None:
    driver = RecordingHello(str(base))
    serve_plugin(driver, name=plugin_name, socket=discovery.SOCKET_DIR / f"{plugin_name}.sock")
    vol = f"{plugin_name}-new"
    volumes.append(vol)
    dockerd.docker(
        "run", "--rm", "--volume-driver", plugin_name, "-v", f"{vol}:/data", busybox_image,
        "sh", "-c", "echo implicit > /data/f",
    )  # fmt: skip

    creates = driver.of("create")
    assert [c.name for c in creates] == [vol]
    assert creates[0].opts is None  # dockerd sent "Opts": null
    assert creates[0].options == {}
    assert (base / vol / "f").read_text() == "implicit\n"
    info = _inspect(dockerd, vol)
    assert info["Driver"] == plugin_name
    assert info["Mountpoint"] == str(base / vol)
    _check_mounts_balanced(driver, vol)
    _remove(dockerd, vol, volumes)
    assert not (base / vol).exists()


def test_inspect_of_a_missing_volume_fails_cleanly(
    fresh_dockerd: Dockerd, serve_plugin: Serve, plugin_name: str, base: Path
) -> None:
    # A daemon of its own (the plugin's ``fresh_dockerd`` fixture): to look up an unknown name
    # dockerd asks every volume driver it ever activated, and it retries each one whose plugin
    # has gone for ~15 s, so on the shared daemon, which saw every earlier test's plugin, this
    # one command could take minutes.
    driver = RecordingHello(str(base))
    serve_plugin(driver, name=plugin_name, socket=discovery.SOCKET_DIR / f"{plugin_name}.sock")
    missing = f"{plugin_name}-missing"
    res = fresh_dockerd.docker("volume", "inspect", missing, check=False)
    assert res.returncode == 1
    assert "no such volume" in res.stderr, res.stderr
    assert missing in res.stderr
    assert res.stdout.strip() in ("", "[]")
    # dockerd found our plugin by scanning, asked it for the name and took its Err as "no such
    # volume"; nothing was created
    assert missing in [g.name for g in driver.of("get")]
    assert driver.of("create") == []
    assert not (base / missing).exists()
    assert _listed(fresh_dockerd, plugin_name) == []
