"""The cluster IPAM driver: unique container addresses across Docker hosts, on SQLite or etcd.

``pools`` (subnet arithmetic, default pools, overlap), ``records`` (the key layout),
``allocator`` (one create-if-absent claim per pool and per address), ``reclaim`` (heartbeat,
elected collector of gone hosts), ``engine_sync`` (what this host's dockerd really holds),
``status`` (the report of ``dockplug net status``), ``driver`` (:class:`NetDriver`).
"""
