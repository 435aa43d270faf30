"""`get endpoints UPSTREAM`: per version, each address with its source, and how resolving
each of its names went (from the resolver's records in etcd, so any replica answers).

    {"upstream": "payments", "active": "v1",
     "versions": [{"version": "v1", "endpoints": ["payments-v1.internal:8080"],
                   "endpointsFrom": {"etcd": "services/payments/v1"},
                   "addresses": [{"address": "10.0.0.7:8080",
                                  "source": "dns:payments-v1.internal"},
                                 {"address": "10.0.0.8:8080",
                                  "source": "etcd:services/payments/v1/10.0.0.8:8080"}],
                   "names": [{"name": "payments-v1.internal", "status": "ok",
                              "resolvedAt": 1764690000.5, "error": null,
                              "failingSince": null}]}]}

Sources: `static`, `dns:NAME`, `etcd:KEY` (a key in etcd's naming format under the
version's `endpointsFrom.etcd`), `registered:PRINCIPAL` (`endpoint register`);
`endpointsFrom` is null for a version without it. A name's `status` is `ok`,
`failing` (its last lookup failed: its last good addresses stay, `error` says why), or
`pending` (not resolved yet: it gives no address).
`resolvedAt` is the last successful lookup, written at most every 30 s.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from controlplane.errors import NotFoundError
from controlplane.model import DesiredState
from controlplane.model.endpoints import names_of
from controlplane.store import Store

log = logging.getLogger(__name__)


async def endpoints_report(store: Store, upstream: str) -> dict[str, Any]:
    """The document above for one upstream, read from etcd now.

    Errors:
        NotFoundError: no such upstream.
        StoreUnavailableError: etcd is down.
    """
    state, _ = await store.load()
    if upstream not in state.upstreams:
        raise NotFoundError(f"Upstream/{upstream} not found; `controlplane get upstreams` "
                            "lists what exists")
    records: dict[str, dict[str, Any]] = {}
    got = await store.kv.range(store.keys.dns)
    for kv in got.kvs:
        name = kv.key[len(store.keys.dns):].decode(errors="replace")
        try:
            record = json.loads(kv.value)
        except ValueError as exc:
            log.warning("unreadable resolver record %s: %s", kv.key.decode(errors="replace"),
                        exc)
            continue
        if isinstance(record, dict):
            records[name] = record
    return report(state, upstream, records)


def report(state: DesiredState, upstream: str,
           records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Pure: the document from a state and the resolver's records by name."""
    spec = state.upstreams[upstream].spec
    versions = []
    for version in sorted(spec.versions):
        endpoints = spec.versions[version].endpoints
        names = sorted(names_of(endpoints))
        source = spec.versions[version].endpoints_from
        versions.append({
            "version": version,
            "endpoints": list(endpoints),
            "endpointsFrom": None if source is None else
                             source.model_dump(mode="json", by_alias=True, exclude_unset=True),
            "addresses": [{"address": a.address, "source": a.source}
                          for a in state.addresses(upstream, version)],
            "names": [_name(name, records.get(name)) for name in names],
        })
    return {"upstream": upstream, "active": spec.active, "versions": versions}


def _name(name: str, record: dict[str, Any] | None) -> dict[str, Any]:
    if record is None:
        return {"name": name, "status": "pending", "resolvedAt": None, "error": None,
                "failingSince": None}
    error = record.get("error")
    status = "failing" if error else "ok" if record.get("resolvedAt") else "pending"
    return {"name": name, "status": status, "resolvedAt": record.get("resolvedAt"),
            "error": error, "failingSince": record.get("failingSince")}
