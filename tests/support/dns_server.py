"""A tiny authoritative DNS server on 127.0.0.1 (UDP) whose answers a test changes.

    dns = DnsServer().start()          # a thread answers on 127.0.0.1:dns.port
    dns.set("payments.test", ["127.0.0.2"], ttl=1)   # A/AAAA by the address's family
    dns.set("payments.test", [])       # the name exists with no address (NOERROR, empty)
    dns.fail("payments.test")          # SERVFAIL for it from now on
    dns.remove("payments.test")        # NXDOMAIN
    dns.stop()
    with DnsServer() as dns: ...        # started, and stopped on the way out

Built on dnspython's message API (dnslib is not installed). Every name it does not
know is NXDOMAIN; `queries` counts the questions asked, per name.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import Counter

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.2)  # so stop() is noticed
        self.port: int = self._sock.getsockname()[1]
        self.address = f"{host}:{self.port}"
        self._records: dict[str, tuple[list[str], int]] = {}
        self._failing: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-server", daemon=True)
        self.queries: Counter[str] = Counter()

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set(self, name: str, addresses: list[str], *, ttl: int = 1) -> None:
        with self._lock:
            self._records[name.lower().rstrip(".")] = (list(addresses), ttl)
            self._failing.discard(name.lower().rstrip("."))

    def fail(self, name: str) -> None:
        with self._lock:
            self._failing.add(name.lower().rstrip("."))

    def remove(self, name: str) -> None:
        with self._lock:
            self._records.pop(name.lower().rstrip("."), None)
            self._failing.discard(name.lower().rstrip("."))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            self._sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        with self._lock:
            self.queries[name] += 1
            if name in self._failing:
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            known = self._records.get(name)
        if known is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        addresses, ttl = known
        family = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
        matching = [a for a in addresses if ipaddress.ip_address(a).version == family]
        if matching:
            rdtype = dns.rdatatype.to_text(question.rdtype)
            response.answer.append(dns.rrset.from_text_list(question.name, ttl, "IN", rdtype,
                                                            matching))
        return response
