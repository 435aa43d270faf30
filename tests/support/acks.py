"""What a test asks of the proxy registry about ACKs: who ACKed or NACKed which versions.

The product does not wait on these: a rollout counts ACKs from the fleet reports in etcd
(`fleet.py`). Tests and their assertions do, on one server's registry.
"""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.xds.proxies import ProxyRegistry, ProxyStatus


def has_acked(proxy: ProxyStatus, versions: Mapping[str, str]) -> bool:
    """Whether the proxy ACKed exactly `versions` ({type URL: version})."""
    return all((t := proxy.type(url)) is not None and t.acked_version == v
               for url, v in versions.items())


def has_nacked(proxy: ProxyStatus, versions: Mapping[str, str]) -> bool:
    """Whether the proxy's last NACK of any type rejected the version in `versions`."""
    return any((t := proxy.type(url)) is not None and t.last_nack_version == v
               and t.acked_version != v for url, v in versions.items())


def ack_progress(registry: ProxyRegistry, group: str, versions: Mapping[str, str]
                 ) -> tuple[int, int]:
    """(proxies of `group` that ACKed `versions`, proxies of `group` connected)."""
    proxies = registry.list(group)
    return sum(1 for p in proxies if has_acked(p, versions)), len(proxies)


async def wait_acked(registry: ProxyRegistry, group: str, versions: Mapping[str, str], *,
                     timeout: float, min_proxies: int = 1) -> bool:
    """Wait until every connected proxy of `group` has ACKed `versions` (only the types
    the test cares about: a proxy never ACKs a type it did not subscribe to).

    Returns:
        True once at least `min_proxies` proxies are connected and all of them ACKed;
        False on timeout or as soon as one of them NACKed one of these versions.
    """
    outcome: list[bool] = []

    def decided() -> bool:  # re-evaluated on every registry change
        proxies = registry.list(group)
        if any(has_nacked(p, versions) for p in proxies):
            outcome.append(False)
            return True
        if len(proxies) >= min_proxies and all(has_acked(p, versions) for p in proxies):
            outcome.append(True)
            return True
        return False

    return await registry.wait_until(decided, timeout=timeout) and outcome[-1]
