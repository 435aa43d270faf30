"""Where endpoints come from besides the YAML: DNS names and leased keys, found by the
leader and written to etcd, whence every replica renders them.

    lookup.py    one name → its A/AAAA addresses and TTL (dnspython, /etc/hosts)
    resolver.py  the leader's loop: every name in use, at its TTL, written to etcd
    naming.py    a leased key's value: etcd's naming format, or a registration
    leased.py    the leader's watches of `endpointsFrom` prefixes and registrations
    report.py    `get endpoints`: per version, each address with its source and status
"""

from controlplane.discovery.leased import LeasedEndpoints
from controlplane.discovery.lookup import DnsLookup, Lookup, parse_servers
from controlplane.discovery.resolver import NameResolver

__all__ = ["DnsLookup", "LeasedEndpoints", "Lookup", "NameResolver", "parse_servers"]
