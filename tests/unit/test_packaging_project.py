"""``dockplug build DIR``: the ``[tool.dockplug]`` table of a user's project, its validation
errors, and the config.json made from it (examples/hello_project)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dockplug.errors import ConfigError
from dockplug.packaging.bundle import build
from dockplug.packaging.project import (
    Project,
    driver_types,
    load_project,
    parse_settings,
    project_config,
)

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello_project"


def test_hello_project_config() -> None:
    project = load_project(HELLO)
    assert project.name == "hello-plugin"
    data = json.loads(project_config(project).to_json())
    assert data["interface"]["types"] == ["docker.volumedriver/1.0"]
    assert data["interface"]["socket"] == "plugin.sock"
    command = data["entrypoint"] + data["args"]["value"]
    assert command == [
        "/usr/bin/python3", "-m", "dockplug", "serve", "hello_plugin:HelloDriver",
        "--socket", "/run/docker/plugins/plugin.sock", "-c", "base=/mnt/volumes",
    ]  # fmt: skip
    assert data["propagatedMount"] == "/mnt/volumes"
    env = {e["name"]: e["value"] for e in data["env"]}
    assert env["PYTHONPATH"] == "/opt/dockplug/site"
    assert set(env) == {
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "DOCKPLUG_DEBUG",
        "DOCKPLUG_METRICS",
        "DOCKPLUG_LOG_FORMAT",
        "DOCKPLUG_BUSY_POLL_US",
    }
    assert data["mounts"] == [] and data["linux"]["capabilities"] == []
    # the probe imports nothing into this process and leaves no bytecode in the project
    assert not list(HELLO.rglob("__pycache__"))


def test_full_table_and_no_propagated_mount_for_non_volume_types() -> None:
    table: dict[str, Any] = {
        "driver": "pkg.mod:D",
        "socket": "x.sock",
        "settings": {"a": "1", "debug": True, "n": 3},
        "capabilities": ["CAP_SYS_ADMIN"],
        "devices": ["/dev/fuse"],
        "network": "host",
        "mounts": [{"name": "state", "source": "/var/lib/x", "destination": "/mnt/state"}],
        "packages": ["sshfs"],
        "description": "d",
    }
    project = Project(Path("/nowhere"), "p", parse_settings(table))
    data = json.loads(project_config(project, ["docker.ipamdriver/1.0"]).to_json())
    assert data["propagatedMount"] == ""
    assert data["args"]["value"][4:] == ["-c", "a=1", "-c", "debug=true", "-c", "n=3"]
    assert data["network"]["type"] == "host" and data["description"] == "d"
    assert data["mounts"][0]["settable"] == ["source"]
    assert data["mounts"][0]["options"] == ["rbind", "rw"]
    assert data["linux"]["devices"][0]["path"] == "/dev/fuse"
    volume = json.loads(project_config(project, ["docker.volumedriver/1.0"]).to_json())
    assert volume["propagatedMount"] == "/mnt/volumes"


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({}, "tool.dockplug.driver: required; fix: add it"),
        ({"driver": "src/pkg/mod.py:D"}, "is not module:Class; fix:"),
        ({"driver": "m:D", "sokcet": "x"}, "tool.dockplug.sokcet: unknown key"),
        ({"driver": "m:D", "socket": "/run/x.sock"}, "absolute path"),
        ({"driver": "m:D", "socket": "a-very-long-socket-name.sock"}, "at most 22 bytes"),
        ({"driver": "m:D", "capabilities": ["sys_admin"]}, "'CAP_SYS_ADMIN'"),
        ({"driver": "m:D", "devices": ["fuse"]}, "'/dev/fuse'"),
        ({"driver": "m:D", "network": "bridge"}, "tool.dockplug.network"),
        ({"driver": "m:D", "packages": ["Bad Name"]}, "not a Debian package name"),
        ({"driver": "m:D", "settings": {"a b": "1"}}, "not a keyword argument name"),
        ({"driver": "m:D", "mounts": [{"source": "/x", "destination": "rel"}]},
         "tool.dockplug.mounts[0].destination: 'rel' is not an absolute path"),
        ({"driver": "m:D", "mounts": [{"destination": "/x"}]},
         "tool.dockplug.mounts[0].source: required"),
    ],
)  # fmt: skip
def test_table_errors_name_key_and_fix(table: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(table)
    assert words in str(info.value), str(info.value)


def _project(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(text)
    return tmp_path


def test_folder_without_table_shows_an_example(tmp_path: Path) -> None:
    path = _project(tmp_path, '[project]\nname = "x"\nversion = "1"\n')
    with pytest.raises(ConfigError, match=r"no \[tool.dockplug\] table") as info:
        load_project(path)
    assert 'driver = "mypkg.plugin:MyDriver"' in str(info.value)
    # dockplug build DIR says the same before touching anything
    with pytest.raises(ConfigError, match=r"no \[tool.dockplug\] table"):
        build(str(path), "x/y", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no pyproject\.toml"):
        build(str(tmp_path / "empty"), "x/y")
    with pytest.raises(ConfigError, match="no built-in driver 'nope'"):
        build("nope", "x/y")


def test_driver_import_errors(tmp_path: Path) -> None:
    path = _project(tmp_path, '[tool.dockplug]\ndriver = "mypkg.plug:Nope"\n')
    (tmp_path / "src" / "mypkg").mkdir(parents=True)
    (tmp_path / "src" / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "src" / "mypkg" / "plug.py").write_text(
        "import dockplug\n\nclass NotADriver:\n    pass\n\n"
        "class Vol(dockplug.VolumeDriver):\n    pass\n"
    )
    with pytest.raises(ConfigError, match=r"Nope in mypkg\.plug is not a dockplug driver class"):
        driver_types(load_project(path))
    _project(tmp_path, '[tool.dockplug]\ndriver = "mypkg.plug:NotADriver"\n')
    with pytest.raises(ConfigError, match="not a dockplug driver class"):
        driver_types(load_project(path))
    _project(tmp_path, '[tool.dockplug]\ndriver = "mypkg.missing:Vol"\n')
    with pytest.raises(ConfigError, match=r"importing it on the host failed(.|\n)*mypkg.missing"):
        driver_types(load_project(path))
    # a src/ layout is found without installing anything
    _project(tmp_path, '[tool.dockplug]\ndriver = "mypkg.plug:Vol"\n')
    assert driver_types(load_project(path)) == ["docker.volumedriver/1.0"]


def _project_copy(tmp_path: Path, dependencies: list[str]) -> Path:
    import shutil

    copy = tmp_path / "hello_project"
    shutil.copytree(HELLO, copy)
    text = (copy / "pyproject.toml").read_text()
    text, n = re.subn(
        r"(?m)^dependencies = .*$", f"dependencies = {json.dumps(dependencies)}", text
    )
    assert n == 1
    (copy / "pyproject.toml").write_text(text)
    return copy


@pytest.mark.timeout(300)
def test_a_project_listing_dockplug_gets_the_running_one(tmp_path: Path) -> None:
    from rich.console import Console

    from dockplug.packaging.rootfs import install_project

    project = _project_copy(tmp_path, ["dockplug>=0.1", "six"])
    rootfs = tmp_path / "rootfs"
    install_project(rootfs, project, Console(stderr=True, quiet=True))
    site = rootfs / "opt/dockplug/site"
    assert (site / "hello_plugin" / "__init__.py").is_file()
    assert (site / "six.py").is_file()  # the project's other requirements come from the index
    # dockplug itself was neither fetched nor built: install_dockplug copies the running one
    assert not (site / "dockplug").exists()
    assert not list(site.glob("dockplug-*.dist-info"))


def test_a_project_needing_another_dockplug_is_refused(tmp_path: Path) -> None:
    from rich.console import Console

    import dockplug
    from dockplug.packaging.rootfs import install_project

    project = _project_copy(tmp_path, ["dockplug>=99"])
    with pytest.raises(ConfigError) as info:
        install_project(tmp_path / "rootfs", project, Console(stderr=True, quiet=True))
    text = str(info.value)
    assert "needs dockplug>=99" in text and f"runs dockplug {dockplug.__version__}" in text
    assert "fix:" in text


def test_dockplug_extras_become_their_requirements(tmp_path: Path) -> None:
    from importlib import metadata

    from dockplug.packaging.rootfs import _project_requirements

    declared = [r for r in metadata.requires("dockplug") or [] if "extra ==" in r]
    if not declared:
        pytest.skip("the installed dockplug metadata lists no extras")
    extra = declared[0].split("extra ==")[1].strip().strip("\"'")
    dist = tmp_path / "p-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: p\nVersion: 0.1\n"
        f"Requires-Dist: Dockplug[{extra}]>=0.1\n"
        "Requires-Dist: six; python_version >= '3'\n"
        'Requires-Dist: dockplug>=99; extra == "never"\n'
    )
    reqs = _project_requirements(dist)
    assert "six; python_version >= '3'" in reqs
    assert not [r for r in reqs if r.lower().startswith("dockplug")]
    wanted = {r.split(";")[0].strip() for r in declared if f'"{extra}"' in r}
    assert wanted and wanted <= set(reqs)
