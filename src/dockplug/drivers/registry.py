"""The one table of dockplug's built-in drivers.

Each entry says everything the rest of dockplug needs to know about a driver: the class that
answers dockerd (imported only when served), the ``dockplug serve NAME`` settings that become
its constructor's keywords, and how it ships as a managed plugin (socket, mounts, capabilities,
devices, the Debian packages and programs its rootfs needs). ``dockplug serve``, ``build``,
``doctor`` and ``ls`` read it; adding a driver is one entry here plus its folder.

This module is imported on every ``dockplug serve``, so it loads no driver code.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dockplug.drivers.ipam.defaults import DEFAULT_POOLS, PREFIX  # strings only
from dockplug.errors import ConfigError
from dockplug.facts import PLUGIN_DIR

if TYPE_CHECKING:
    from dockplug.protocol.base import Driver


@dataclass(frozen=True)
class ServeSetting:
    """One ``dockplug serve DRIVER --flag``: NAME is the constructor's keyword (``base_dir``
    becomes ``--base-dir``). TYPE is str, Path, float, int or bool (a flag)."""

    name: str
    help: str
    type: type = str
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    multiple: bool = False  # repeatable: the keyword gets a tuple of every value given
    #: an environment variable that gives the value too (a managed plugin's settable Env)
    env: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class StateMount:
    """A host folder bind-mounted into the managed plugin for its state (survives upgrades)."""

    source: str
    destination: str = "/mnt/state"
    description: str = "host folder for the state database (survives upgrades)"


@dataclass(frozen=True)
class HostMount:
    """Another host folder bind-mounted into the managed plugin (source settable with
    ``docker plugin set NAME NAME.source=DIR``); OPTIONS as in config.json."""

    name: str
    source: str
    destination: str
    description: str
    options: tuple[str, ...] = ("rbind", "rw")


@dataclass(frozen=True)
class Managed:
    """How the driver ships as a managed (v2) plugin: the parts of its config.json that are
    the driver's own (``packaging.config.config_for_driver`` adds the rest)."""

    description: str
    socket: str  # a bare name: dockerd finds it under PLUGIN_DIR/<plugin id>/
    args: tuple[str, ...]  # of ``dockplug`` inside the plugin
    propagated_mount: str = ""
    state_mount: StateMount | None = None
    capabilities: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    #: Device nodes the kernel makes while the plugin runs (``/dev/loopN`` once loop-control
    #: hands one out). dockerd copies linux.devices into the plugin once, at enable
    #: (``plugin/v2/plugin_linux.go``), so these need the host's /dev bind-mounted on /dev and
    #: allowAllDevices (runc then leaves /dev alone and the cgroup lets any device through).
    runtime_devices: tuple[str, ...] = ()
    network: str = ""  # "host" when the plugin must reach the host's network
    #: Debian packages its rootfs needs besides python3, and the program each provides (how a
    #: base without a dpkg database is checked for it)
    packages: dict[str, str] = field(default_factory=dict)
    #: config.json interface types (empty: a volume driver)
    types: tuple[str, ...] = ()
    #: host folders besides the state folder
    mounts: tuple[HostMount, ...] = ()


@dataclass(frozen=True)
class BuiltinDriver:
    name: str  # ``dockplug serve NAME`` / ``dockplug build NAME``
    cls: str  # ``module:Class``, imported when served
    plugin_name: str  # the default --name: what users give ``docker -d``
    help: str  # ``dockplug serve NAME --help``
    settings: tuple[ServeSetting, ...]
    managed: Managed
    #: the constructor also takes ``plugin_name`` (the --name it is served as)
    takes_name: bool = False

    def load(self) -> type[Driver]:
        module, _, attr = self.cls.partition(":")
        cls: type[Driver] = getattr(importlib.import_module(module), attr)
        return cls


def _state_dir(driver: str, holds: str) -> ServeSetting:
    """``--state-dir``, under /var/lib/dockplug/DRIVER by default: where HOLDS live."""
    return ServeSetting(
        "state_dir", f"Where {holds} live.", Path, Path(f"/var/lib/dockplug/{driver}")
    )


def _base_dir(driver: str, what: str) -> ServeSetting:
    """A volume driver's ``--base-dir``, /var/lib/dockplug/DRIVER/volumes by default."""
    return ServeSetting("base_dir", what, Path, Path(f"/var/lib/dockplug/{driver}/volumes"))


def _docker_host(why: str) -> ServeSetting:
    """``--docker-host``: the Engine API a driver reads in the background (never while
    answering dockerd), for WHY."""
    return ServeSetting("docker_host", f"Engine API {why} [default: DOCKER_HOST].", metavar="URL")


def _managed_args(driver: str, *more: str) -> tuple[str, ...]:
    """``dockplug serve DRIVER`` inside the managed plugin, on the socket dockerd looks for."""
    return ("serve", driver, "--socket", f"{PLUGIN_DIR}/{driver}.sock", *more)


def _state_mount(driver: str, description: str | None = None) -> StateMount:
    """The managed plugin's state folder on the host, never shared with the driver run
    directly on the host (/var/lib/dockplug/DRIVER)."""
    source = f"/var/lib/dockplug/managed-{driver}"
    return (
        StateMount(source) if description is None else StateMount(source, description=description)
    )


LOCAL = BuiltinDriver(
    name="local",
    cls="dockplug.drivers.volume.local.driver:LocalDriver",
    plugin_name="dockplug-local",
    help=(
        "Serve persistent local volumes: docker volume create -d dockplug-local NAME.\n\n"
        "Options users may give with -o: mountpoint, uid, gid, mode, size (-o help lists them)."
    ),
    settings=(
        _base_dir("local", "Where volume folders are created."),
        _state_dir("local", "the state database and size-limit images"),
        ServeSetting("allowed_root", "Only accept -o mountpoint=PATH inside this folder.", Path),
        ServeSetting("keep_data", "Remove forgets volumes but keeps their folders.", bool, False),
        ServeSetting(
            "scope",
            "global: the base dir is storage shared by all hosts.",
            str,
            "local",
            choices=("local", "global"),
        ),
        ServeSetting(
            "gc_interval",
            "Every SECONDS, clear mount counts no running container backs (0: off).",
            float,
            0.0,
            metavar="SECONDS",
        ),
        _docker_host("for gc"),
    ),
    # Inside the plugin, volumes live under the propagated mount (so dockerd sees them on the
    # host) and state on a bind-mounted host folder of its own, never shared with a local
    # driver run directly on the host.
    managed=Managed(
        description="dockplug local volumes: persistent, crash-safe, size limits",
        socket="local.sock",
        args=_managed_args("local", "--base-dir", "/mnt/volumes", "--state-dir", "/mnt/state"),
        propagated_mount="/mnt/volumes",
        state_mount=_state_mount("local"),
        capabilities=("CAP_SYS_ADMIN",),  # loop mounts for size limits
        devices=("/dev/loop-control",),
        runtime_devices=("/dev/loopN",),  # one per size-limited volume (-o size=)
    ),
)  # fmt: skip

SSHFS = BuiltinDriver(
    name="sshfs",
    cls="dockplug.drivers.volume.sshfs.driver:SshfsDriver",
    plugin_name="dockplug-sshfs",
    help=(
        "Serve sshfs volumes: docker volume create -d dockplug-sshfs -o sshcmd=user@host:/path "
        "NAME.\n\n"
        "Passwords by reference: -o secret=NAME (dockplug secret set NAME), -o password_file=PATH,"
        " or a key with -o identity_file=PATH. Host keys are checked strictly (-o host_key=...,"
        " -o known_hosts_file=PATH). -o help lists every option.\n\n"
        "With --allow-inline-secrets a Create may carry -o password=...: dockplug keeps it only "
        "in its secrets store, but dockerd itself keeps every create option and shows it under "
        "Options in docker volume inspect; prefer -o secret=NAME."
    ),
    settings=(
        _base_dir("sshfs", "Where each volume's mountpoint is made."),
        _state_dir("sshfs", "the state database, the secrets store and ssh configs"),
        ServeSetting(
            "allow_inline_secrets",
            "Accept -o password=... (kept only in the secrets store; dockerd still shows it "
            "in docker volume inspect).",
            bool,
            False,
        ),
        ServeSetting(
            "mount_timeout",
            "Give up on an sshfs that has not mounted after SECONDS.",
            float,
            30.0,
            metavar="SECONDS",
            minimum=1,
        ),
    ),
    # sshfs needs FUSE (CAP_SYS_ADMIN and /dev/fuse) and the host's network (the remote is
    # reached from the host). Secrets for the plugin are stored in its state folder with
    # `dockplug secret set NAME --state-dir /var/lib/dockplug/managed-sshfs`; key files placed
    # there are /mnt/state/... inside.
    managed=Managed(
        description="dockplug sshfs volumes: remote folders over SSH, secrets kept secret",
        socket="sshfs.sock",
        args=_managed_args("sshfs", "--base-dir", "/mnt/volumes", "--state-dir", "/mnt/state"),
        propagated_mount="/mnt/volumes",
        state_mount=_state_mount(
            "sshfs", "host folder for the state database, secrets store and ssh configs"
        ),
        capabilities=("CAP_SYS_ADMIN",),
        devices=("/dev/fuse",),
        network="host",
        packages={"sshfs": "sshfs", "fuse3": "fusermount3", "openssh-client": "ssh"},
    ),
)  # fmt: skip

AUTHZ = BuiltinDriver(
    name="authz",
    cls="dockplug.drivers.authz.driver:CedarAuthz",
    plugin_name="dockplug-authz",
    help=(
        "Serve an authorization plugin for dockerd --authorization-plugin=dockplug-authz: "
        "Cedar policies over a typed model of each API call, fail-closed.\n\n"
        "The principal is the TLS client certificate (dockerd --tlsverify) or, on the local "
        "socket, --local-principal. Reloads on SIGHUP and on file change; a bad policy is "
        "refused and the last good one stays. Break-glass: remove the plugin from dockerd's "
        "authorization-plugins (daemon.json) and reload dockerd."
    ),
    settings=(
        ServeSetting("policy", "Cedar policy folder (policy, schema, tests) or file.", Path,
                     metavar="DIR|FILE"),
        ServeSetting("audit_log", "Append one JSON line per decision here (rotated).", Path,
                     metavar="PATH"),
        ServeSetting("syslog", "Also send audit lines to syslog: /dev/log or HOST:PORT (UDP)."),
        ServeSetting("local_principal", "Principal of requests without a TLS user (the unix "
                     "socket); empty: deny them.", str, "local", metavar="NAME"),
        ServeSetting("time_budget", "Deny a decision that takes longer than SECONDS.", float,
                     0.5, metavar="SECONDS", minimum=0.001),
        ServeSetting("watch_interval", "Check the policy files for changes every SECONDS "
                     "(0: SIGHUP only).", float, 1.0, metavar="SECONDS", minimum=0),
    ),
    # the policy folder is bind-mounted read-only from the host; the audit log goes to the
    # state folder
    managed=Managed(
        description="dockplug authz: Cedar policies for the Engine API, fail-closed",
        socket="authz.sock",
        args=_managed_args(
            "authz", "--policy", "/mnt/state/policy", "--audit-log", "/mnt/state/audit.log"
        ),
        state_mount=_state_mount(
            "authz", "host folder holding policy/ (the Cedar policy) and audit.log"
        ),
        types=("docker.authz/1.0",),
    ),
    takes_name=True,
)  # fmt: skip

LOGS = BuiltinDriver(
    name="logs",
    cls="dockplug.drivers.log.driver:LogsDriver",
    plugin_name="dockplug-logs",
    help=(
        "Serve a log driver: docker run --log-driver dockplug-logs --log-opt forward=URL ...\n\n"
        "Every container's output is kept in local segments first (docker logs reads them) and "
        "forwarded from there to each sink: --forward URL for all containers, --log-opt "
        "forward=URL for one. URLs: syslog+tcp://H:P, syslog+tls://H:P, "
        "journal-remote+http://H:P, loki+http://H:P/loki/api/v1/push, "
        "elasticsearch+http://H:P/INDEX. --log-opt help lists the per-container options."
    ),
    settings=(
        _state_dir("logs", "the segments and the state database"),
        ServeSetting(
            "forward",
            "A sink every container's logs go to (repeatable).",
            metavar="URL",
            multiple=True,
        ),
        ServeSetting(
            "max_total_size",
            "Cap on all containers' segments together; the oldest go first.",
            str,
            "10G",
            metavar="SIZE",
        ),
        ServeSetting(
            "max_age",
            "Delete a log whose container stopped writing this many DAYS ago.",
            float,
            7.0,
            metavar="DAYS",
            minimum=0,
        ),
        ServeSetting(
            "flush_interval",
            "Send what accumulated every SECONDS (batching by time).",
            float,
            0.2,
            metavar="SECONDS",
            minimum=0.01,
        ),
        ServeSetting(
            "batch_size", "Send at most SIZE per batch (batching by size).", str, "1M",
            metavar="SIZE",
        ),
        ServeSetting(
            "retry_max",
            "Longest wait between tries while a sink is away (exponential, jittered).",
            float,
            10.0,
            metavar="SECONDS",
            minimum=0.1,
        ),
    ),
    # Inside the plugin the FIFOs appear under /run/docker/logging (dockerd creates them in the
    # rootfs); state goes to a host folder; the host's network reaches sinks on 127.0.0.1.
    managed=Managed(
        description="dockplug logs: local store first, forwarding that never blocks a container",
        socket="logs.sock",
        args=_managed_args("logs", "--state-dir", "/mnt/state"),
        state_mount=_state_mount("logs", "host folder for the log segments and the state database"),
        network="host",
        types=("docker.logdriver/1.0",),
    ),
)  # fmt: skip

NET = BuiltinDriver(
    name="net",
    cls="dockplug.drivers.net:NetDriver",
    plugin_name="dockplug-net",
    help=(
        "Serve the cluster IPAM: docker network create --ipam-driver dockplug-net "
        "[--subnet CIDR] ... (with -d bridge, macvlan, ipvlan).\n\n"
        "One host: state in SQLite under --state-dir. Several hosts: --etcd "
        "http(s)://HOST:PORT[,...] on every host, each with its own --host-id; the same "
        "--subnet asked for on several hosts is one shared pool with one gateway, and "
        "addresses are unique across them. --ipam-opt private=true keeps a pool to one host; "
        "--ipam-opt help lists the options.\n\n"
        "Networks: docker network create -d dockplug-net [--ipam-driver dockplug-net] "
        "[--subnet CIDR] [--internal] [-o masquerade=true] NAME gives a bridge on this host; "
        "-o dockplug.network=NAME (the same on every host, with --etcd) joins one VXLAN "
        "network across hosts. -o help lists the options."
    ),
    settings=(
        _state_dir("net", "the SQLite store and the queue of releases made while etcd was away"),
        ServeSetting(
            "etcd",
            "The cluster store: etcd v3 endpoints http(s)://HOST:PORT[,...] [default: SQLite].",
            metavar="URLS",
            env="ETCD_ENDPOINTS",
        ),
        ServeSetting("etcd_ca", "CA of etcd's certificate (https endpoints).", Path, env="ETCD_CA"),
        ServeSetting(
            "etcd_cert", "Client certificate for etcd's --client-cert-auth.", Path, env="ETCD_CERT"
        ),
        ServeSetting("etcd_key", "Key of --etcd-cert.", Path, env="ETCD_KEY"),
        ServeSetting(
            "vtep",
            "This host's VXLAN endpoint: an address or interface of the underlay [default: "
            "the source address of the route to the first etcd endpoint].",
            metavar="ADDRESS|INTERFACE",
            env="DOCKPLUG_VTEP",
        ),
        ServeSetting(
            "host_id",
            "This host's name in the cluster store; unique per host [default: the hostname].",
        ),
        ServeSetting(
            "default_pools",
            "Pools without --subnet come from these, space-separated (dockerd's syntax).",
            str,
            DEFAULT_POOLS,
            metavar="'base=CIDR,size=N ...'",
        ),
        ServeSetting(
            "reclaim_after",
            "Grace period before an address no container holds, or the records of a host "
            "whose heartbeat stopped, are freed (e.g. 30s, 10m).",
            str,
            "5m",
            metavar="DURATION",
        ),
        ServeSetting(
            "heartbeat_ttl",
            "Seconds of this host's heartbeat lease.",
            int,
            10,
            metavar="SECONDS",
            minimum=1,
        ),
        _docker_host("of this host, read to learn which addresses containers hold"),
        ServeSetting(
            "key_prefix",
            "Prefix of every key in the store (several clusters on one etcd).",
            str,
            PREFIX,
        ),
    ),
    # The store is reached over the host's network (etcd); state (SQLite, queued releases)
    # on a host folder of its own. Settings go in args: docker plugin set NAME args="...".
    managed=Managed(
        description="dockplug-net: cluster IPAM and networks across hosts (bridge, VXLAN)",
        socket="net.sock",
        args=_managed_args(
            "net", "--state-dir", "/mnt/state", "--docker-host", "unix:///mnt/engine/docker.sock"
        ),
        state_mount=_state_mount("net"),
        # the leak reclaimer reads this host's Engine API: the folder of dockerd's socket (/run
        # holds /run/docker.sock; a bind, not rbind, of /run leaves its submounts out; connect
        # works on a read-only mount)
        mounts=(
            HostMount(
                "engine", "/run", "/mnt/engine",
                "host folder holding dockerd's API socket docker.sock (read for leaked addresses)",
                ("bind", "ro"),
            ),
        ),
        network="host",
        types=("docker.ipamdriver/1.0", "docker.networkdriver/1.0"),
        # netlink (bridges, veths, VXLAN, FDB) and iptables in the host's network namespace
        capabilities=("CAP_NET_ADMIN", "CAP_NET_RAW"),
        packages={"iptables": "iptables"},
    ),
)  # fmt: skip

#: name -> entry, in the order ``dockplug serve --help`` lists them
BUILTINS: dict[str, BuiltinDriver] = {d.name: d for d in (LOCAL, SSHFS, AUTHZ, LOGS, NET)}


def builtin(name: str) -> BuiltinDriver:
    """The entry of the built-in driver NAME; an error listing the others if there is none."""
    try:
        return BUILTINS[name]
    except KeyError:
        raise ConfigError(
            f"no built-in driver {name!r}; fix: use one of {', '.join(BUILTINS)}"
        ) from None


def setting_default(driver: str, name: str) -> Any:
    """The default of one serve setting (``dockplug local gc`` and ``secret`` share them)."""
    for s in builtin(driver).settings:
        if s.name == name:
            return s.default
    raise KeyError(f"{driver} has no setting {name}")
