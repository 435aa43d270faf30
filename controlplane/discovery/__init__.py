"""Where endpoints come from besides the YAML: DNS names, resolved by the leader.

    lookup.py    one name → its A/AAAA addresses and TTL (dnspython, /etc/hosts)
    resolver.py  the leader's loop: every name in use, at its TTL, written to etcd
    report.py    `get endpoints`: per version, each address with its source and status
"""

from controlplane.discovery.lookup import DnsLookup, Lookup, parse_servers
from controlplane.discovery.resolver import NameResolver

__all__ = ["DnsLookup", "Lookup", "NameResolver", "parse_servers"]
