"""The dockplug-net network driver: a bridge per network on one host, a VXLAN overlay across
hosts.

``links`` (netlink through pyroute2: bridges, veths, VXLAN, FDB, neighbours), ``firewall``
(forward, isolation and masquerade rules beside dockerd's), ``records`` (what is kept where),
``cluster`` (specs, VNIs, VTEPs and endpoint ads in the cluster store, and its watch),
``driver`` (:class:`~dockplug.drivers.network.driver.BridgeDriver`).
"""
