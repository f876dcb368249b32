"""config.json validation: every classic managed-plugin mistake is named with its field and fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dockplug.errors import ConfigError
from dockplug.packaging.bundle import default_output
from dockplug.packaging.config import config_for_driver, load_config, validate_config
from dockplug.packaging.rootfs import cache_dir, debian_mirror


def base() -> dict[str, Any]:
    return {
        "description": "x",
        "entrypoint": ["/bin/plugin"],
        "interface": {"types": ["docker.volumedriver/1.0"], "socket": "p.sock"},
    }


def test_minimal_and_doc_example_are_valid() -> None:
    assert validate_config(base()).interface.socket == "p.sock"
    example = {
        **base(),
        "documentation": "https://example.invalid/docs",
        "workdir": "/",
        "network": {"type": "host"},
        "propagatedMount": "/mnt/volumes",
        "mounts": [{"name": "state", "description": "state dir", "source": "/var/lib/p",
                    "destination": "/state", "type": "bind", "options": ["rbind", "rw"],
                    "settable": ["source"]}],
        "env": [{"name": "DEBUG", "description": "verbose", "value": "0", "settable": ["value"]}],
        "args": {"name": "args", "description": "extra flags", "value": [], "settable": ["value"]},
        "linux": {"capabilities": ["CAP_SYS_ADMIN"], "allowAllDevices": False,
                  "devices": [{"name": "fuse", "path": "/dev/fuse", "settable": ["path"]}]},
        "ipcHost": False,
        "pidHost": False,
    }  # fmt: skip
    cfg = validate_config(example)
    assert cfg.propagated_mount == "/mnt/volumes"
    assert json.loads(cfg.to_json())["linux"]["devices"][0]["path"] == "/dev/fuse"


def test_keys_match_case_insensitively_like_dockerd() -> None:
    data = {"Description": "x", "Entrypoint": ["/p"], "PropagatedMount": "/data",
            "Interface": {"Types": ["docker.volumedriver/1.0"], "Socket": "p.sock"}}  # fmt: skip
    assert validate_config(data).propagated_mount == "/data"


def _error(change: dict[str, Any]) -> str:
    data = base()
    for key, value in change.items():
        if "." in key:
            outer, inner = key.split(".")
            data[outer] = {**data[outer], inner: value}
        else:
            data[key] = value
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    return str(info.value)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"interface.types": ["docker.VolumeDriver/1.0"]}, "interface.types",
         "docker.volumedriver/1.0"),
        ({"interface.types": ["docker.volumedriver/1.1"]}, "interface.types", "/1.0"),
        ({"interface.socket": "/run/docker/plugins/p.sock"}, "interface.socket",
         "absolute path"),
        ({"interface.socket": "sub/p.sock"}, "interface.socket", "contains '/'"),
        ({"interface.socket": "a-very-long-socket-name.sock"}, "interface.socket", "22 bytes"),
        ({"interface.protocolscheme": "grpc"}, "interface.protocolscheme",
         "moby.plugins.http/v1"),
        ({"mounts": [{"destination": "/state", "source": None}]}, "mounts[0]",
         "mount source is not specified"),
        ({"mounts": [{"destination": "state", "source": "/s"}]}, "mounts[0].destination",
         "absolute"),
        ({"propagatedMounts": "/data"}, "propagatedMounts", "unknown key"),
        ({"capabilites": ["CAP_SYS_ADMIN"]}, "capabilites", "unknown key"),
        ({"linux": {"capabilities": ["sys_admin"]}}, "linux.capabilities", "CAP_SYS_ADMIN"),
        ({"linux": {"devices": [{"path": "fuse"}]}}, "linux.devices[0].path", "/dev/fuse"),
        ({"entrypoint": []}, "entrypoint", "at least 1"),
        ({"env": [{"name": "A", "settable": ["name"]}]}, "env[0].settable", "value"),
        ({"propagatedMount": "data"}, "propagatedMount", "absolute"),
    ],
)  # fmt: skip
def test_errors_name_the_field_and_the_fix(change: dict[str, Any], field: str, words: str) -> None:
    message = _error(change)
    assert f"config.json: {field}" in message, message
    assert words in message, message


def test_missing_interface_is_named() -> None:
    data = base()
    del data["interface"]
    with pytest.raises(ConfigError, match=r"config.json: interface: required; fix: add it"):
        validate_config(data)


def test_config_for_local_driver() -> None:
    cfg = config_for_driver("local")
    data = json.loads(cfg.to_json())
    assert data["interface"] == {"types": ["docker.volumedriver/1.0"], "socket": "local.sock",
                                 "protocolscheme": ""}  # fmt: skip
    assert data["entrypoint"] == ["/usr/bin/python3", "-m", "dockplug"]
    assert data["args"]["value"][:2] == ["serve", "local"]
    assert "/run/docker/plugins/local.sock" in data["args"]["value"]
    assert data["propagatedMount"] == "/mnt/volumes"
    assert data["mounts"][0]["source"] == "/var/lib/dockplug/managed-local"
    assert data["mounts"][0]["destination"] == "/mnt/state"
    assert data["mounts"][0]["settable"] == ["source"]
    assert data["linux"]["capabilities"] == ["CAP_SYS_ADMIN"]
    env = {e["name"]: e for e in data["env"]}
    assert env["DOCKPLUG_DEBUG"]["settable"] == ["value"]
    assert env["PYTHONPATH"]["value"] == "/opt/dockplug/site"
    with pytest.raises(ConfigError, match="no built-in driver 'nope'"):
        config_for_driver("nope")


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path / "config.json")


def test_default_output_and_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_output("reg:5000/dockplug/local:1.0") == Path("build/local")
    monkeypatch.setenv("DOCKPLUG_ROOTFS_CACHE", "/tmp/x")
    assert cache_dir() == Path("/tmp/x")


def test_debian_mirror_from_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.invalid/debian"
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://other.invalid/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://other.invalid/debian"
    with pytest.raises(ConfigError, match="no Debian mirror"):
        debian_mirror(tmp_path / "none")
