"""A network driver: one Linux bridge per network, one veth pair per endpoint, made with the
``ip`` command of iproute2 (no extra Python dependency). Needs root.

Run ``sudo python examples/network_veth.py [NAME] [STATE_FILE]``, then
``docker network create -d NAME --subnet 10.31.0.0/24 mynet`` and ``docker run --network mynet``.
dockerd never resends a network's configuration, so the networks are kept in STATE_FILE.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dockplug
from dockplug.protocol.network import InterfaceName, JoinReply


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One ``ip`` command; its stderr becomes the plugin error dockerd shows."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise dockplug.PluginError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _link_exists(name: str) -> bool:
    """In this process's network namespace (/sys/class/net may show another one)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


class VethDriver(dockplug.NetworkDriver):
    def __init__(self, state_file: str = "/var/lib/dockplug/network-veth.json") -> None:
        self.state_file = Path(state_file)
        self.lock = threading.Lock()
        self.networks: dict[str, dict[str, Any]] = {}
        if self.state_file.exists():
            self.networks = json.loads(self.state_file.read_text())

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.networks))
        tmp.replace(self.state_file)

    @staticmethod
    def _names(endpoint_id: str) -> tuple[str, str]:
        """Host and container side of an endpoint's veth (interface names: 15 bytes at most)."""
        return f"dpv{endpoint_id[:11]}", f"dpc{endpoint_id[:11]}"

    def _network(self, network_id: str) -> dict[str, Any]:
        net = self.networks.get(network_id)
        if net is None:
            raise dockplug.NotFound(f"no network {network_id[:12]}")
        return net

    def create_network(self, req: Any) -> None:
        if not req.ipv4_data:
            raise dockplug.InvalidRequest("IPv4Data is empty: this driver needs an IPv4 pool")
        data = req.ipv4_data[0]
        bridge = f"dpb{req.network_id[:11]}"
        with self.lock:
            if req.network_id in self.networks:
                raise dockplug.Conflict(f"network {req.network_id[:12]} exists")
            ip("link", "add", bridge, "type", "bridge")
            try:
                if data.gateway:
                    ip("addr", "add", data.gateway, "dev", bridge)
                ip("link", "set", bridge, "up")
            except dockplug.PluginError:
                ip("link", "del", bridge, check=False)
                raise
            gateway = str(ipaddress.ip_interface(data.gateway).ip) if data.gateway else None
            self.networks[req.network_id] = {
                "bridge": bridge,
                "gateway": gateway,
                "endpoints": {},
                "options": req.driver_options,
            }
            self._save()

    def delete_network(self, req: Any) -> None:
        with self.lock:
            net = self._network(req.network_id)
            for endpoint_id in list(net["endpoints"]):
                ip("link", "del", self._names(endpoint_id)[0], check=False)
            ip("link", "del", net["bridge"], check=False)
            del self.networks[req.network_id]
            self._save()

    def create_endpoint(self, req: Any) -> None:
        host, peer = self._names(req.endpoint_id)
        with self.lock:
            net = self._network(req.network_id)
            if req.endpoint_id in net["endpoints"]:
                raise dockplug.Conflict(f"endpoint {req.endpoint_id[:12]} exists")
            ip("link", "add", host, "type", "veth", "peer", "name", peer)
            try:
                ip("link", "set", host, "master", net["bridge"], "up")
                mac = req.interface.mac_address if req.interface else ""
                if mac:
                    ip("link", "set", peer, "address", mac)
            except dockplug.PluginError:
                ip("link", "del", host, check=False)
                raise
            net["endpoints"][req.endpoint_id] = {"joined": False}
            self._save()
        return None  # dockerd's addresses stand

    def _endpoint(self, req: Any) -> dict[str, Any]:
        net = self._network(req.network_id)
        endpoint = net["endpoints"].get(req.endpoint_id)
        if endpoint is None:
            raise dockplug.NotFound(f"no endpoint {req.endpoint_id[:12]}")
        return endpoint

    def endpoint_oper_info(self, req: Any) -> dict[str, Any]:
        with self.lock:
            self._endpoint(req)
            host, _ = self._names(req.endpoint_id)
            return {"host_interface": host, "bridge": self._network(req.network_id)["bridge"]}

    def join(self, req: Any) -> JoinReply:
        with self.lock:
            endpoint = self._endpoint(req)
            _, peer = self._names(req.endpoint_id)
            if not _link_exists(peer):  # moved into a sandbox and back out by an earlier Leave
                raise dockplug.PluginError(f"{peer} is gone; recreate the endpoint")
            endpoint["joined"] = True
            self._save()
            return JoinReply(
                interface_name=InterfaceName(src_name=peer, dst_prefix="eth"),
                gateway=self._network(req.network_id)["gateway"],
            )

    def leave(self, req: Any) -> None:
        with self.lock:
            self._endpoint(req)["joined"] = False
            self._save()

    def delete_endpoint(self, req: Any) -> None:
        with self.lock:
            net = self._network(req.network_id)
            net["endpoints"].pop(req.endpoint_id, None)
            ip("link", "del", self._names(req.endpoint_id)[0], check=False)  # takes the peer too
            self._save()


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "veth"
    dockplug.run(VethDriver(*sys.argv[2:3]), name=name)
