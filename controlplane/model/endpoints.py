"""Endpoints as users write them (`HOST:PORT`) and the addresses they stand for.

A version's `endpoints` mix IP literals (`10.0.0.7:8080`, `[::1]:8080`) and DNS names
(`payments-v2.prod.svc.cluster.local:8080`). An IP is its own address (source
`static`); a name stands for the addresses the leader's resolver last found for it
and wrote to etcd (source `dns:NAME`), read back into `DesiredState.discovered`.
A version with `endpointsFrom` also takes the addresses the leader copied from leased
keys: etcd's naming format under a prefix (source `etcd:KEY`) and `endpoint register`
(source `registered:PRINCIPAL`). Every replica renders the same EDS from those stored
addresses, never from a lookup or a watch of its own.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

STATIC = "static"
DNS = "dns:"
"""The prefix of a resolved address's source: `dns:payments.internal`."""
ETCD = "etcd:"
"""The prefix of an address read from a key in etcd's naming format: `etcd:KEY`."""
REGISTERED = "registered:"
"""The prefix of an address `endpoint register` holds: `registered:PRINCIPAL`."""
LEASED = (ETCD, REGISTERED)

# An RFC 1123 label: letters, digits, hyphens inside, 1-63 characters.
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_NAME_MAX = 253


@dataclass(frozen=True)
class HostPort:
    """One endpoint: `host` an IP (no brackets) or a DNS name, `port` 1-65535."""

    host: str
    port: int
    is_name: bool

    def address(self) -> str:
        """As EDS and users write it: `10.0.0.7:80`, `[::1]:80`, `name:80`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str) -> HostPort:
    """`HOST:PORT` → HostPort. HOST is an IPv4 literal, an IPv6 literal in brackets, or
    an RFC 1123 name.

    Errors:
        ValueError: anything else, with the reason (a scheme, a path, a bad port...).
    """
    if "://" in text or "/" in text:
        raise ValueError(f"{text!r}: write HOST:PORT, without a scheme or a path")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT (the port is missing)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number in 1-65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{text!r}: an IPv6 address is written [ADDRESS]:PORT")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{text!r}: {host[1:-1]!r} is not an IPv6 address") from None
        return HostPort(host[1:-1], int(port), is_name=False)
    if ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:{port}")
    labels = host.split(".")
    if _dotted_quad(labels):
        return HostPort(host, int(port), is_name=False)

    if len(host) > _NAME_MAX or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a DNS name "
                         "(RFC 1123: labels of letters, digits and inner hyphens, 1-63 "
                         "characters each, 253 in all)")
    if labels[-1].isdigit():  # e.g. 10.0.0.300: a mistyped IP, not a name
        raise ValueError(f"{text!r}: {host!r} is not an IP address, and a DNS name does "
                         "not end in a numeric label")
    return HostPort(host.lower(), int(port), is_name=True)


def _dotted_quad(labels: Sequence[str]) -> bool:
    """What ipaddress.IPv4Address accepts (four decimal octets, no leading zeros),
    checked without it: translate parses every endpoint, and large configs have 100k."""
    return len(labels) == 4 and all(
        label.isdigit() and len(label) <= 3 and int(label) <= 255
        and (label == "0" or label[0] != "0") for label in labels)


def is_ip_endpoint(text: str) -> bool:
    """Whether a validated endpoint is an IP literal (not a name): cheap, for translate.
    A validated host of only digits and dots is an IPv4 (a name may not end in a numeric
    label), and one in brackets an IPv6."""
    host = text.rpartition(":")[0]
    return host.startswith("[") or not host.strip("0123456789.")


def names_of(endpoints: Iterable[str]) -> set[str]:
    """The DNS names among `endpoints` (already validated), lowercased."""
    return {hp.host for hp in map(parse_endpoint, endpoints) if hp.is_name}


@dataclass(frozen=True)
class Discovered:
    """An address a version's endpoints stand for, and where it came from."""

    address: str
    """`IP:PORT`, IPv6 in brackets."""
    source: str
    """`static`, `dns:NAME` for a resolved name, `etcd:KEY`, `registered:PRINCIPAL`."""


def discovered_to_json(addresses: Sequence[Discovered]) -> bytes:
    """The stored form: a JSON list of {address, source}, in the given order."""
    return json.dumps([{"address": a.address, "source": a.source} for a in addresses],
                      separators=(",", ":")).encode()


def discovered_from_json(raw: bytes) -> tuple[Discovered, ...]:
    """Errors:
        ValueError: not a JSON list of {address, source} strings.
    """
    data = json.loads(raw)
    if not isinstance(data, list):
        raise ValueError("not a JSON list")
    out = []
    for item in data:
        if not (isinstance(item, dict) and isinstance(item.get("address"), str)
                and isinstance(item.get("source"), str)):
            raise ValueError(f"{item!r} is not {{address, source}}")
        parse_endpoint(item["address"])
        out.append(Discovered(item["address"], item["source"]))
    return tuple(out)


def version_addresses(endpoints: Sequence[str], discovered: Sequence[Discovered], *,
                      etcd_prefix: str | None = None, registered: bool = False
                      ) -> list[Discovered]:
    """What a version's `endpoints` stand for, in the order written: an IP as itself, a
    name as the addresses `discovered` holds for it at that port (sorted as stored);
    then its leased addresses as stored: those of keys under `etcd_prefix` (when given)
    and registered ones (when `registered`). An address listed twice counts once, with
    its first source. Discovered addresses of names the version no longer lists, or of
    sources it no longer takes, are left out, so a stale record changes nothing."""
    if not discovered:  # the common case (IPs only, or names not resolved yet): no parsing
        return [Discovered(text, STATIC) for text in endpoints if is_ip_endpoint(text)]
    by_name: dict[tuple[str, int], list[str]] = {}
    for item in discovered:
        if item.source.startswith(DNS):
            port = parse_endpoint(item.address).port
            by_name.setdefault((item.source[len(DNS):], port), []).append(item.address)
    out: list[Discovered] = []
    seen: set[str] = set()
    for text in endpoints:
        hp = parse_endpoint(text)
        if hp.is_name:
            found = [Discovered(a, DNS + hp.host) for a in by_name.get((hp.host, hp.port), [])]
        else:
            found = [Discovered(hp.address(), STATIC)]
        for item in found:
            if item.address not in seen:
                seen.add(item.address)
                out.append(item)
    for item in discovered:
        if item.address not in seen and _taken(item.source, etcd_prefix, registered):
            seen.add(item.address)
            out.append(item)
    return out


def _taken(source: str, etcd_prefix: str | None, registered: bool) -> bool:
    """Whether a version with this `endpointsFrom` takes a leased address of `source`."""
    if source.startswith(ETCD):
        return etcd_prefix is not None and source[len(ETCD):].startswith(etcd_prefix)
    return registered and source.startswith(REGISTERED)


DiscoveredMap = Mapping[tuple[str, str], tuple[Discovered, ...]]
"""(upstream, version) → the addresses stored for its names and leased keys."""
