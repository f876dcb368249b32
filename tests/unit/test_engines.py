"""Which engine the suite runs and whose recordings a check replays (no dockerd needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dockplug.conformance import engine as info
from dockplug.conformance.replay import engine_series, load, recording_path
from dockplug.errors import ConfigError
from dockplug.testing import engines


@pytest.mark.parametrize(
    ("version", "series"),
    [("20.10.24+dfsg1", "20.10"), ("28.5.2+dfsg4", "28"), ("26.1.5", "26"), ("28", "28")],
)
def test_engine_series(version: str, series: str) -> None:
    assert engine_series(version) == series


def test_selected_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(engines.ENV, raising=False)
    assert engines.selected().name == "20.10"
    for given in ("28", "28.5", "28.x"):
        monkeypatch.setenv(engines.ENV, given)
        assert engines.selected() == engines.SERIES["28"]
    monkeypatch.setenv(engines.ENV, "19.03")
    with pytest.raises(ConfigError, match=r"DOCKPLUG_ENGINE='19.03'.*fix: set it to one of"):
        engines.selected()


def test_each_engine_replays_its_own_recordings() -> None:
    """28's live-restore recording has the extra Get; an engine without recordings of its own
    (26) falls back to 20.10's, and says so."""

    def gets(rec: dict[str, object]) -> int:
        return sum(1 for ex in rec["exchanges"] if ex["path"] == "/VolumeDriver.Get")  # type: ignore[attr-defined,index]

    old, new = load("dockerd-live-restore"), load("dockerd-live-restore", "28")
    assert old["engine"].startswith("20.10.") and new["engine"].startswith("28.")
    assert gets(new) == gets(old) + 1
    assert load("volume-cli", "26")["engine"].startswith("20.10.")
    assert not Path(str(recording_path("volume-cli", "26", fallback=False))).exists()
    assert info.given("26").recordings() == "20.10 (no recordings of 26)"
    assert info.given("28.5.2").recordings() == "28"
    report = info.EngineInfo("28.5.2", "1.51", "unix:///x").to_json()
    assert json.loads(json.dumps(report))["series"] == "28"


def test_recordings_of_28_send_its_host_header() -> None:
    for name in ("volume-cli", "ipam-network", "authz-create-run"):
        hosts = {dict(ex["headers"]).get("Host") for ex in load(name, "28")["exchanges"]}
        assert hosts == {"plugin.moby.localhost"}, (name, hosts)
        assert {dict(ex["headers"]).get("Host") for ex in load(name)["exchanges"]} == {""}


def test_recordings_ship_in_the_package() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"conformance/recordings/*/*.json"' in pyproject


def test_a_dockerd_with_a_daemon_json_of_its_own_replaces_the_engines() -> None:
    """One --config-file per dockerd: the hosts of testing/hosts.py each read their own
    daemon.json (live-restore is switched on there), the single test dockerd the engine's."""
    engine = engines.Engine(
        engines.SERIES["28"], Path("/e/dockerd"), None, ("--init-path=/i",), Path("/e/d.json")
    )
    assert engine.args() == ("--init-path=/i", "--config-file=/e/d.json")
    assert engine.args(Path("/h1/daemon.json")) == (
        "--init-path=/i",
        "--config-file=/h1/daemon.json",
    )
    assert engines.Engine(engines.SERIES["20.10"], Path("/usr/sbin/dockerd")).args() == ()
