"""The dockplug-net NetworkDriver: a Linux bridge per network on one host, and a VXLAN overlay
when the same ``-o dockplug.network=NAME`` is created on several hosts.

dockerd sends CreateNetwork with the network ID but not its name (libnetwork's
``driverapi.CreateNetwork`` gets the ID, options and IPAM data only), and a plugin must never
call the Engine API while answering dockerd (that deadlocks dockerd's start, docker-net-dhcp#23),
so hosts meet on the ``dockplug.network`` option, not on the docker network name.

Scope is ``local`` with ``ConnectivityScope: global``: a ``global`` data scope makes 20.10's
``docker network create`` fail after CreateNetwork and roll back when there is no
``--cluster-store`` (libnetwork ``controller.NewNetwork`` then ``updateToStore``), and 23.0
removed the cluster store; the connectivity scope only matters under swarm (DiscoverNew).

Kernel work runs in worker threads (pyroute2's sync API, iptables); records are kept in
``--state-dir/links.json`` so a plugin killed with -9 adopts its bridges, veths and VXLAN
devices on restart. Before it makes a network's links it notes the network in the same file
(``made``), so the start-up sweep removes what a crash left half-made and never what another
dockplug-net on the host (another state dir) made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from dockplug.drivers.network.bridges import Bridges
from dockplug.drivers.network.cluster import ClusterUnavailable
from dockplug.drivers.network.options import NETWORK_OPTIONS
from dockplug.drivers.options import OptionSet
from dockplug.errors import ConfigError
from dockplug.observe import log_event
from dockplug.observe.metrics import Metrics
from dockplug.protocol.base import Empty
from dockplug.protocol.network import (
    CapabilitiesReply,
    CreateEndpointRequest,
    CreateNetworkRequest,
    DiscoveryRequest,
    EndpointInterface,
    EndpointRequest,
    ExternalConnectivityRequest,
    JoinReply,
    JoinRequest,
    NetworkDriver,
    NetworkRequest,
)
from dockplug.state.kv import KVStore


def open_cluster_store(
    etcd: str | None, ca: Path | None, cert: Path | None, key: Path | None
) -> KVStore | None:
    if not etcd:
        if ca or cert or key:
            raise ConfigError("--etcd-ca/--etcd-cert/--etcd-key need --etcd https://HOST:PORT")
        return None
    from dockplug.state.etcd_kv import EtcdKV

    return EtcdKV(etcd, ca=ca, cert=cert, key=key, timeout=3.0)


def etcd_host(etcd: str | None) -> str | None:
    """The first etcd endpoint's host: the route toward it picks the default VTEP address."""
    if not etcd:
        return None
    first = etcd.split(",")[0].strip()
    host = first.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        with contextlib.suppress(OSError):
            return socket.gethostbyname(host)
    return None


class BridgeDriver(NetworkDriver):
    """The network half of dockplug-net (serve it alone, or with the IPAM in one class)."""

    network_options: ClassVar[OptionSet] = NETWORK_OPTIONS

    def __init__(
        self,
        state_dir: Path | str = Path("/var/lib/dockplug/net"),
        etcd: str | None = None,
        etcd_ca: Path | None = None,
        etcd_cert: Path | None = None,
        etcd_key: Path | None = None,
        host_id: str | None = None,
        vtep: str | None = None,
        heartbeat_ttl: int = 10,
        key_prefix: str = "/dockplug/net/v1",
        log: Any = log_event,
        store: KVStore | None = None,
    ) -> None:
        self._init_bridges(
            Path(state_dir),
            host_id or socket.gethostname(),
            store or open_cluster_store(etcd, etcd_ca, etcd_cert, etcd_key),
            key_prefix,
            vtep,
            etcd_host(etcd),
            heartbeat_ttl,
            log,
        )
        self._own_store = store is None

    def _init_bridges(
        self,
        state_dir: Path,
        host: str,
        store: KVStore | None,
        prefix: str,
        vtep: str | None,
        toward: str | None,
        ttl: int,
        log: Callable[[str], None],
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.bridges = Bridges(state_dir, host, store, prefix, vtep, toward, ttl, log)

    async def network_capabilities(self, req: Empty) -> CapabilitiesReply:
        return CapabilitiesReply(scope="local", connectivity_scope="global")

    async def create_network(self, req: CreateNetworkRequest) -> None:
        await self.bridges.create_network(req)

    async def delete_network(self, req: NetworkRequest) -> None:
        await self.bridges.delete_network(req)

    async def create_endpoint(self, req: CreateEndpointRequest) -> EndpointInterface | None:
        return await self.bridges.create_endpoint(req)

    async def endpoint_oper_info(self, req: EndpointRequest) -> dict[str, Any]:
        return self.bridges.oper_info(req)

    async def join(self, req: JoinRequest) -> JoinReply:
        return await self.bridges.join(req)

    async def leave(self, req: EndpointRequest) -> None:
        await self.bridges.leave(req)

    async def delete_endpoint(self, req: EndpointRequest) -> None:
        await self.bridges.delete_endpoint(req)

    async def program_external_connectivity(self, req: ExternalConnectivityRequest) -> None:
        self.bridges.program(req)

    async def revoke_external_connectivity(self, req: EndpointRequest) -> None:
        return None

    async def discover_new(self, req: DiscoveryRequest) -> None:
        """Only swarm sends these (ConnectivityScope global); membership comes from the store."""
        return None

    async def discover_delete(self, req: DiscoveryRequest) -> None:
        return None

    def declare_metrics(self, metrics: Metrics) -> None:
        """Networks and endpoints on this host; peers (other hosts' live VTEPs) and the
        cluster store's watch."""
        metrics.gauge_fn("networks", "Networks on this host", lambda: len(self.bridges.nets))
        metrics.gauge_fn("endpoints", "Endpoints on this host", lambda: len(self.bridges.eps))
        metrics.gauge_fn("peers", "Other hosts with a live VTEP in this host's networks",
                         self._peers)  # fmt: skip

    def _peers(self) -> float:
        cluster = self.bridges.cluster
        if cluster is None:
            return 0
        hosts: set[str] = set()
        for net in cluster.summary().values():
            members: dict[str, dict[str, object]] = net["hosts"]  # type: ignore[assignment]
            hosts |= {h for h, info in members.items() if info.get("alive")}
        return len(hosts - {self.bridges.host})

    def health_reasons(self) -> list[str]:
        cluster = self.bridges.cluster
        if cluster is not None and cluster.watch_error:
            return [f"cluster store watch: {cluster.watch_error} (peers are not updated)"]
        return []

    async def startup(self) -> None:
        await self.bridges.startup()

    async def shutdown(self) -> None:
        await self.bridges.shutdown()
        if self._own_store and self.bridges.store is not None:
            await self.bridges.store.close()


__all__ = ["NETWORK_OPTIONS", "BridgeDriver", "ClusterUnavailable"]
