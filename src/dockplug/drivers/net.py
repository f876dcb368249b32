"""``dockplug serve net``: the cluster IPAM and the network driver in one class, one process,
one store.

dockerd calls the IPAM (RequestPool, RequestAddress) and the network driver (CreateNetwork,
CreateEndpoint) of ``docker network create -d dockplug-net --ipam-driver dockplug-net`` on the
same plugin; one class serves both protocols on one socket (method names do not meet:
``ipam_capabilities`` / ``network_capabilities``). The network half keeps its state in one
attribute (``bridges``) so the two halves' attributes cannot collide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from dockplug.drivers.ipam.driver import NetDriver as IpamNetDriver
from dockplug.drivers.network.driver import BridgeDriver, etcd_host
from dockplug.observe.metrics import Metrics
from dockplug.protocol.base import Empty


class NetDriver(IpamNetDriver, BridgeDriver):
    """dockplug-net: addresses unique across hosts, and networks that span them."""

    metrics_family: ClassVar[str] = "net"

    def __init__(self, vtep: str | None = None, **kw: Any) -> None:
        IpamNetDriver.__init__(self, **kw)
        self._own_store = False  # the IPAM half closes the shared store
        self._init_bridges(
            Path(self.state_dir),
            self.host,
            self.store if kw.get("etcd") or kw.get("store") else None,
            kw.get("key_prefix") or "/dockplug/net/v1",
            vtep,
            etcd_host(kw.get("etcd")),
            self.heartbeat_ttl,
            self.log,
        )

    async def startup(self) -> None:
        await IpamNetDriver.startup(self)
        await BridgeDriver.startup(self)

    async def shutdown(self) -> None:
        await BridgeDriver.shutdown(self)
        await IpamNetDriver.shutdown(self)

    def declare_metrics(self, metrics: Metrics) -> None:
        IpamNetDriver.declare_metrics(self, metrics)
        BridgeDriver.declare_metrics(self, metrics)

    def health_reasons(self) -> list[str]:
        return [*IpamNetDriver.health_reasons(self), *BridgeDriver.health_reasons(self)]

    async def admin_status(self, req: Empty) -> dict[str, Any]:
        report = await IpamNetDriver.admin_status(self, req)
        report["network"] = self.bridges.status()
        return report
