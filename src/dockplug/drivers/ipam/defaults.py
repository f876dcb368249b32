"""The cluster IPAM's defaults as plain strings, kept apart from the code that parses them:
``drivers/registry.py`` shows them in ``dockplug serve net --help`` and is imported by every
``dockplug serve``, which must not load the subnet arithmetic and key records for that."""

#: pools a network gets without --subnet (``--default-pools``)
DEFAULT_POOLS = "base=10.128.0.0/9,size=24 base=fd00:d0c::/48,size=64"
#: where the cluster's records live in the key-value store (``--key-prefix``)
PREFIX = "/dockplug/net/v1"
