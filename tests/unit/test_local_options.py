"""The local driver's input checks (issue 3): ``-o`` options are typed and refused with a message
naming the option and what is accepted, ``-o help`` prints the table and creates nothing, volume
names are plain file names, and ``mountpoint`` never reaches system folders or dockplug's own."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dockplug.drivers.volume.local import LOCAL_OPTIONS, LocalDriver
from dockplug.drivers.volume.names import check_name
from dockplug.errors import InvalidOption, InvalidRequest, PluginError
from dockplug.facts import NAME_MAX as MAX_NAME
from dockplug.protocol.volume import CreateRequest, MountRequest, NameRequest
from dockplug.testing.servers import ThreadedPlugin

Serve = Callable[..., ThreadedPlugin]
ACCEPTED = "accepted: gid, mode, mountpoint, size, uid"
OPTION_NAMES = ("mountpoint", "uid", "gid", "mode", "size")


@pytest.fixture
def make_driver(short_tmp: Path) -> Iterator[Callable[..., LocalDriver]]:
    made: list[LocalDriver] = []

    def make(**kw: object) -> LocalDriver:
        kw.setdefault("base_dir", short_tmp / "lib" / "volumes")
        kw.setdefault("state_dir", short_tmp / "state")
        kw.setdefault("log", lambda line: None)
        driver = LocalDriver(**kw)  # type: ignore[arg-type]
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.shutdown()


@pytest.fixture
def driver(make_driver: Callable[..., LocalDriver]) -> LocalDriver:
    return make_driver()


def create(driver: LocalDriver, name: str, **opts: str) -> None:
    driver.create(CreateRequest(name=name, opts=opts or None))


def nothing_created(driver: LocalDriver) -> bool:
    return not driver.volumes and not driver.store.load()[0] and not list(driver.base_dir.iterdir())


# --- option parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ({"uid": "1000"}, {"uid": 1000}),
        ({"uid": "0", "gid": "0"}, {"uid": 0, "gid": 0}),
        ({"gid": "4294967294"}, {"gid": 4294967294}),
        ({"mode": "0750"}, {"mode": 0o750}),
        ({"mode": "750"}, {"mode": 0o750}),
        ({"mode": "1777"}, {"mode": 0o1777}),
        ({"size": "20M"}, {"size": 20 * 2**20}),
        ({"size": "1G"}, {"size": 2**30}),
        ({"size": "1.5g"}, {"size": 3 * 2**29}),
        ({"size": "512MiB"}, {"size": 512 * 2**20}),
        ({"size": "10GB"}, {"size": 10 * 2**30}),
        ({"size": str(64 * 2**20)}, {"size": 64 * 2**20}),
        ({"size": "8M"}, {"size": 8 * 2**20}),
        ({"mountpoint": "/srv/data"}, {"mountpoint": "/srv/data"}),
        ({"mountpoint": "/srv//data/./x/"}, {"mountpoint": "/srv/data/x"}),
        ({}, {}),
    ],
)
def test_good_options_parse_to_typed_values(raw: dict[str, str], parsed: dict[str, object]) -> None:
    assert LOCAL_OPTIONS.parse(raw) == parsed


def test_null_opts_mean_no_options() -> None:
    assert LOCAL_OPTIONS.parse(None) == {}


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("uid", "abc", "whole number from 0 to 4294967294"),
        ("uid", "-1", "whole number from 0 to 4294967294"),
        ("uid", "1.5", "whole number from 0 to 4294967294"),
        ("uid", "", "whole number from 0 to 4294967294"),
        ("uid", "4294967295", "whole number from 0 to 4294967294"),
        ("gid", "root", "whole number from 0 to 4294967294"),
        ("gid", "99999999999", "whole number from 0 to 4294967294"),
        ("mode", "rwxr-x---", "octal mode such as 0755"),
        ("mode", "0789", "octal mode such as 0755"),
        ("mode", "", "octal mode such as 0755"),
        ("mode", "17777", "octal mode from 0000 to 7777"),
        ("mode", "-755", "octal mode from 0000 to 7777"),
        ("size", "", "a size such as 512M or 10G"),
        ("size", "ten", "a size such as 512M or 10G"),
        ("size", "10X", "a size such as 512M or 10G"),
        ("size", "nan", "a size such as 512M or 10G"),
        ("size", "inf", "a size such as 512M or 10G"),
        ("size", "1e400", "a size such as 512M or 10G"),
        ("size", "-1M", "positive"),
        ("size", "0", "positive"),
        ("size", "1M", "at least 8M"),
        ("size", "8388607", "at least 8M"),
        ("mountpoint", "relative/dir", "absolute host path such as /srv/data"),
        ("mountpoint", "", "absolute host path such as /srv/data"),
        ("mountpoint", "~/data", "absolute host path such as /srv/data"),
        ("mountpoint", "/srv/../proc", "'..' is not allowed"),
        ("mountpoint", "/srv/a\0b", "NUL"),
    ],
)
def test_bad_value_names_the_option_and_what_is_accepted(
    key: str, value: str, accepted: str
) -> None:
    with pytest.raises(InvalidOption) as info:
        LOCAL_OPTIONS.parse({key: value})
    message = str(info.value)
    assert message.startswith(f"option {key}="), message
    assert accepted in message
    assert info.value.status == 400


@pytest.mark.parametrize("key", ["color", "labels", "o", "Size", "UID", "type", "device"])
def test_unknown_option_lists_the_accepted_ones(key: str) -> None:
    with pytest.raises(InvalidOption) as info:
        LOCAL_OPTIONS.parse({"uid": "1", key: "x"})
    message = str(info.value)
    assert f"unknown option {key!r}" in message
    assert ACCEPTED in message
    assert "-o help" in message


def test_bad_option_over_the_socket_is_a_400_and_creates_nothing(
    serve_plugin: Serve, driver: LocalDriver
) -> None:
    plugin = serve_plugin(driver)
    with plugin.client() as client:
        reply = client.call("VolumeDriver.Create", {"Name": "v", "Opts": {"uid": "bob"}})
        assert reply.status == 400
        assert reply.error is not None and reply.error.startswith("option uid='bob':")
        reply = client.call("VolumeDriver.Create", {"Name": "v", "Opts": {"colour": "red"}})
        assert reply.status == 400 and reply.error is not None and ACCEPTED in reply.error
        assert client.call("VolumeDriver.List", {}).json == {"Volumes": []}
        assert client.call("VolumeDriver.Get", {"Name": "v"}).error == "no such volume: v"
    assert nothing_created(driver)


@pytest.mark.parametrize(
    "opts", [{"help": ""}, {"help": "1"}, {"help": "", "size": "20M", "uid": "1000"}]
)
def test_help_returns_the_table_as_an_error_and_creates_nothing(
    serve_plugin: Serve, driver: LocalDriver, opts: dict[str, str]
) -> None:
    plugin = serve_plugin(driver)
    with plugin.client() as client:
        reply = client.call("VolumeDriver.Create", {"Name": "helpme", "Opts": opts})
        assert reply.status == 400
        table = reply.error
        assert table is not None
        assert table.startswith("options of the local volume driver (-o NAME=VALUE):")
        for name in OPTION_NAMES:
            assert f"\n  {name} " in table
        assert "e.g. size=10G" in table and "e.g. mode=0750" in table
        assert table.endswith("no volume was created; -o help only prints this table")
        assert client.call("VolumeDriver.List", {}).json == {"Volumes": []}
    assert nothing_created(driver)
    assert not driver.images.exists()


def test_help_wins_over_a_bad_option(driver: LocalDriver) -> None:
    with pytest.raises(InvalidOption, match="options of the local volume driver"):
        create(driver, "v", help="", uid="nobody")
    assert nothing_created(driver)


# --- names ----------------------------------------------------------------------------------

ANONYMOUS = "3f5a9c0d6e1b2a4f8c7d9e0b1a2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e"


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "0",
        "data",
        "my-volume",
        "my_volume.v2",
        "Postgres-Data_01",
        "vol.with.dots",
        "a..b",  # '..' inside a name is a plain file name, not a path step
        "x" * MAX_NAME,
        ANONYMOUS,
        os.urandom(32).hex(),
    ],
)
def test_docker_style_and_anonymous_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        ".hidden",
        ".trash",
        "-vol",
        "_vol",
        "a/b",
        "/abs",
        "../escape",
        "vol/..",
        "a\0b",
        "\0",
        "vol name",
        "vol:tag",
        "vol\\x",
        "vol*",
        "vol\n",
        "vol\r",
        "\tvol",
        "x" * (MAX_NAME + 1),
        # unicode that looks like something harmless
        "a\u2215b",  # division slash
        "a\uff0fb",  # fullwidth solidus
        "a\u2044b",  # fraction slash
        "\u202evol",  # right-to-left override
        "vol\u200b",  # zero-width space
        "vo\u0301l",  # combining accent
        "\uff56\uff4f\uff4c",  # fullwidth letters
        "vol\u00a0x",  # no-break space
        "\u0661\u0662",  # Arabic-Indic digits
        "\u212aelvin",  # Kelvin sign, case-folds to K
        "caf\u00e9",
        "\U0001f600",
        "\uff0e\uff0e",  # fullwidth dots
    ],
)
def test_names_that_are_not_plain_volume_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_name(name)
    assert info.value.status == 400
    assert "volume name" in str(info.value)


def test_long_multibyte_names_are_counted_in_bytes() -> None:
    with pytest.raises(InvalidRequest, match=f"longer than {MAX_NAME} bytes"):
        check_name("\u00e9" * 200)  # 200 characters, 400 bytes


@pytest.mark.parametrize("name", ["../escape", "..", "a/b", "/tmp/abs", "a\0b", "\u202eevil"])
def test_bad_names_touch_nothing_on_any_endpoint(
    serve_plugin: Serve, driver: LocalDriver, short_tmp: Path, name: str
) -> None:
    plugin = serve_plugin(driver)
    with plugin.client() as client:
        for endpoint, body in [
            ("VolumeDriver.Create", {"Name": name, "Opts": None}),
            ("VolumeDriver.Create", {"Name": name, "Opts": {"mountpoint": str(short_tmp / "m")}}),
            ("VolumeDriver.Get", {"Name": name}),
            ("VolumeDriver.Path", {"Name": name}),
            ("VolumeDriver.Mount", {"Name": name, "ID": "abc"}),
            ("VolumeDriver.Unmount", {"Name": name, "ID": "abc"}),
            ("VolumeDriver.Remove", {"Name": name}),
        ]:
            reply = client.call(endpoint, body)
            assert reply.status == 400, (endpoint, reply.raw)
            assert reply.error is not None and "volume name" in reply.error
    assert nothing_created(driver)
    assert sorted(p.name for p in short_tmp.iterdir()) == ["lib", "state", "test-plugin.sock"]
    assert not (short_tmp / "lib" / "escape").exists()


def test_driver_methods_check_names_before_anything_else(driver: LocalDriver) -> None:
    for call in (
        lambda: driver.create(CreateRequest(name="../x")),
        lambda: driver.mount(MountRequest(name="../x", id="1")),
        lambda: driver.unmount(MountRequest(name="../x", id="1")),
        lambda: driver.remove(NameRequest(name="../x")),
    ):
        with pytest.raises(InvalidRequest):
            call()
    assert nothing_created(driver)


# --- mountpoint policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/", "/proc", "/proc/1", "/proc/self/root", "/sys", "/sys/kernel", "/dev", "/dev/shm", "//"],
)
def test_system_folders_are_refused(driver: LocalDriver, target: str) -> None:
    with pytest.raises(InvalidOption) as info:
        create(driver, "v", mountpoint=target)
    message = str(info.value)
    assert message.startswith(f"option mountpoint={target}:")
    assert "refused" in message
    assert nothing_created(driver)


@pytest.mark.parametrize("link_to", ["/proc", "/proc/self", "/sys/fs", "/dev", "/dev/shm"])
def test_a_symlink_into_a_system_folder_is_refused(
    driver: LocalDriver, short_tmp: Path, link_to: str
) -> None:
    link = short_tmp / "innocent"
    link.symlink_to(link_to)
    for target in (link, link / "new-folder"):
        with pytest.raises(InvalidOption, match="system folder; refused"):
            create(driver, "v", mountpoint=str(target))
    assert nothing_created(driver)


def test_a_symlink_to_the_root_is_refused(driver: LocalDriver, short_tmp: Path) -> None:
    (short_tmp / "root").symlink_to("/")
    with pytest.raises(InvalidOption, match="system folder; refused"):
        create(driver, "v", mountpoint=str(short_tmp / "root"))
    assert nothing_created(driver)


def test_the_base_dir_and_anything_inside_or_above_it_is_refused(
    driver: LocalDriver, short_tmp: Path
) -> None:
    base = driver.base_dir
    create(driver, "existing")
    for target in (base, base / "existing", base / "new", base / "a" / "b", base.parent, short_tmp):
        with pytest.raises(InvalidOption, match="overlaps the base dir"):
            create(driver, "v", mountpoint=str(target))
    # a symlink elsewhere that leads back into the base dir
    (short_tmp / "back").symlink_to(base / "existing")
    with pytest.raises(InvalidOption, match="overlaps the base dir"):
        create(driver, "v", mountpoint=str(short_tmp / "back"))
    assert sorted(driver.volumes) == ["existing"]
    assert sorted(p.name for p in base.iterdir()) == ["existing"]


def test_the_state_dir_and_anything_inside_or_above_it_is_refused(
    make_driver: Callable[..., LocalDriver], short_tmp: Path
) -> None:
    # state and base in unrelated trees, so only the state-dir rule can refuse these
    driver = make_driver(base_dir=short_tmp / "b" / "volumes", state_dir=short_tmp / "s" / "state")
    state = driver.state_dir
    for target in (state, state / "images", state / "new", state.parent):
        with pytest.raises(InvalidOption, match="overlaps the state dir") as info:
            create(driver, "v", mountpoint=str(target))
        assert str(info.value).startswith(f"option mountpoint={target}:")
    assert nothing_created(driver)
    assert {p.name for p in state.iterdir()} <= {"volumes.db", "volumes.db-wal", "volumes.db-shm"}


def test_paths_outside_the_allowed_root_are_refused(
    make_driver: Callable[..., LocalDriver], short_tmp: Path
) -> None:
    allowed = short_tmp / "allowed"
    allowed.mkdir()
    driver = make_driver(allowed_root=allowed)
    (allowed / "escape").symlink_to(short_tmp / "elsewhere")
    for target in (short_tmp / "elsewhere", allowed.parent / "allowedx", allowed / "escape"):
        with pytest.raises(InvalidOption, match="outside the allowed root") as info:
            create(driver, "v", mountpoint=str(target))
        assert str(allowed) in str(info.value)
    assert not (short_tmp / "elsewhere").exists()
    assert not (short_tmp / "allowedx").exists()
    create(driver, "inside", mountpoint=str(allowed / "data"))
    assert driver.volumes["inside"].mountpoint == str(allowed / "data")
    assert (allowed / "data").is_dir()


def test_a_new_folder_elsewhere_is_created(driver: LocalDriver, short_tmp: Path) -> None:
    target = short_tmp / "srv" / "new" / "data"
    create(driver, "v", mountpoint=str(target))
    assert target.is_dir()
    rec = driver.volumes["v"]
    assert rec.mountpoint == str(target) and not rec.owned
    assert driver.mount(MountRequest(name="v", id="m1")) == str(target)


def test_an_existing_folder_is_used_as_it_is(driver: LocalDriver, short_tmp: Path) -> None:
    target = short_tmp / "existing"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    create(driver, "v", mountpoint=str(target) + "/")
    assert (target / "keep.txt").read_text() == "precious"
    assert driver.volumes["v"].mountpoint == str(target)


def test_a_symlink_to_an_allowed_folder_resolves_to_its_target(
    driver: LocalDriver, short_tmp: Path
) -> None:
    (short_tmp / "real").mkdir()
    (short_tmp / "alias").symlink_to(short_tmp / "real")
    create(driver, "v", mountpoint=str(short_tmp / "alias"))
    assert driver.volumes["v"].mountpoint == str(short_tmp / "real")


def test_a_file_is_not_a_mountpoint(driver: LocalDriver, short_tmp: Path) -> None:
    (short_tmp / "file").write_text("x")
    with pytest.raises(PluginError, match="file exists and is not a folder"):
        create(driver, "v", mountpoint=str(short_tmp / "file"))
    assert (short_tmp / "file").read_text() == "x"
    (driver.base_dir / "clash").write_text("y")  # a stray file where the folder would go
    with pytest.raises(PluginError, match="clash exists and is not a folder"):
        create(driver, "clash")
    assert (driver.base_dir / "clash").read_text() == "y"
    assert not driver.volumes


def test_size_is_refused_with_a_mountpoint(driver: LocalDriver, short_tmp: Path) -> None:
    with pytest.raises(InvalidOption, match="option size: only for volumes under the base dir"):
        create(driver, "v", mountpoint=str(short_tmp / "data"), size="20M")
    assert not (short_tmp / "data").exists()
    assert nothing_created(driver)
