"""Looking one DNS name up: its A and AAAA addresses and how long they may be kept.

dnspython's asyncio resolver asks the servers (`--dns-server`, or the system's from
/etc/resolv.conf) on the event loop: no thread per lookup. With the system's servers,
/etc/hosts answers first (as getaddrinfo does: `localhost`, compose-style entries);
dnspython does not read it, so `HostsFile` does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from controlplane.errors import FieldError, InvalidInputError, ResolutionError

log = logging.getLogger(__name__)

MIN_TTL_S, MAX_TTL_S = 1.0, 30.0
"""Re-resolve at the record's TTL, clamped to this: a 0 TTL does not spin, a day-long
one still notices a change within 30 s."""
HOSTS_TTL_S = MAX_TTL_S
LOOKUP_TIMEOUT_S = 3.0
"""One lookup (A and AAAA together, every server tried) gives up after this."""


@dataclass(frozen=True)
class Answer:
    """A name's addresses (sorted, IPv6 without brackets) and seconds to keep them."""

    addresses: tuple[str, ...]
    ttl: float


class Lookup(Protocol):
    """Resolves one name (the resolver's seam: tests may pass their own)."""

    async def resolve(self, name: str) -> Answer:
        """Errors:
            ResolutionError: no address now (why, in the message).
        """
        ...


def clamp_ttl(ttl: float) -> float:
    return min(MAX_TTL_S, max(MIN_TTL_S, ttl))


def parse_servers(text: str) -> tuple[tuple[str, int], ...]:
    """`--dns-server HOST:PORT[,HOST:PORT]` → ((ip, port), ...); HOST is an IP literal
    (IPv6 in brackets): a name would need a resolver to find the resolver.

    Errors:
        InvalidInputError: an entry is not IP:PORT, naming the flag.
    """
    servers: list[tuple[str, int]] = []
    problems: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        host, sep, port = item.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ipaddress.ip_address(host)
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError
        except ValueError:
            problems.append(f"{item!r} is not IP:PORT (e.g. 10.0.0.2:53 or [::1]:53)")
            continue
        servers.append((host, int(port)))
    if problems or not servers:
        raise InvalidInputError([FieldError("--dns-server", "; ".join(problems) or
                                             "give at least one IP:PORT")])
    return tuple(servers)


class HostsFile:
    """/etc/hosts, re-read when it changes: name → its addresses."""

    def __init__(self, path: Path = Path("/etc/hosts")) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._names: dict[str, tuple[str, ...]] = {}

    def get(self, name: str) -> tuple[str, ...]:
        try:
            stat = os.stat(self._path)
        except OSError:
            return ()
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            self._stamp = (stat.st_mtime_ns, stat.st_size)
            self._names = self._parse()
        return self._names.get(name.lower().rstrip("."), ())

    def _parse(self) -> dict[str, tuple[str, ...]]:
        found: dict[str, set[str]] = {}
        try:
            text = self._path.read_text(errors="replace")
        except OSError:
            return {}
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            try:
                address = str(ipaddress.ip_address(fields[0].split("%", 1)[0]))
            except ValueError:
                continue
            for name in fields[1:]:
                found.setdefault(name.lower(), set()).add(address)
        return {name: tuple(sorted(addrs)) for name, addrs in found.items()}


class DnsLookup:
    """A and AAAA through dnspython's asyncio resolver.

    Args:
        servers: (ip, port) of the servers to ask; empty: the system's (resolv.conf,
            its search domains, and /etc/hosts first).
    """

    def __init__(self, servers: Sequence[tuple[str, int]] = (), *,
                 hosts: HostsFile | None = None) -> None:
        if servers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                                          for host, port in servers]
            self._hosts: HostsFile | None = hosts
        else:
            self._resolver = dns.asyncresolver.Resolver()
            self._resolver.use_search_by_default = True  # short names, as getaddrinfo
            self._hosts = hosts or HostsFile()
        self._resolver.lifetime = LOOKUP_TIMEOUT_S

    async def resolve(self, name: str) -> Answer:
        if self._hosts is not None and (listed := self._hosts.get(name)):
            return Answer(listed, HOSTS_TTL_S)
        results = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"),
                                       return_exceptions=True)
        addresses: set[str] = set()
        ttls: list[float] = []
        reasons: list[str] = []
        for result in results:
            if isinstance(result, ResolutionError):
                reasons.append(str(result))
            elif isinstance(result, BaseException):
                raise result
            elif result is not None:
                found, ttl = result
                addresses.update(found)
                ttls.append(ttl)
        if not addresses:
            raise ResolutionError(reasons[0] if reasons else f"{name}: no A or AAAA records")
        return Answer(tuple(sorted(addresses)), clamp_ttl(min(ttls)))

    async def _query(self, name: str, rdtype: str) -> tuple[list[str], float] | None:
        """The addresses of one type and their TTL; None when the name has none of them."""
        try:
            answer = await self._resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise ResolutionError(f"{name}: no such name (NXDOMAIN)") from None
        except dns.resolver.NoNameservers as exc:
            raise ResolutionError(f"{name}: no server answered ({exc})") from None
        except dns.exception.Timeout:
            raise ResolutionError(f"{name}: no answer within {LOOKUP_TIMEOUT_S:g}s") from None
        except (dns.exception.DNSException, OSError) as exc:  # OSError: e.g. no route
            raise ResolutionError(f"{name}: {exc}") from None
        if answer.rrset is None:
            return None
        return [str(rdata) for rdata in answer.rrset], float(answer.rrset.ttl)
