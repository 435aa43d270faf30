"""`apply`, `get` and `delete`: resources as kubectl-like YAML files."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from controlplane.api import admin_pb2
from controlplane.cli.client import Connection
from controlplane.cli.output import documents, table
from controlplane.contract import DISCOVERY_SERVICE, Phase
from controlplane.model import canonical_kind, parse_yaml, to_document


def apply(conn: Connection, path: str, *, dry_run: bool) -> int:
    """Validate locally (exit 2 on the first look), then apply all-or-nothing on the server."""
    text = sys.stdin.read() if path == "-" else _read_file(path)
    resources = parse_yaml(text)
    request = admin_pb2.ApplyRequest(
        documents=[json.dumps(to_document(r, reveal_secrets=True)) for r in resources],
        dry_run=dry_run,
    )
    response = conn.stub().Apply(request, metadata=conn.metadata(), timeout=conn.timeout)
    suffix = " (dry run)" if dry_run else ""
    for change in response.changes:
        print(f"{change.kind.lower()}/{change.name} {change.action}{suffix}")
    for group, diff in sorted(response.xds_diff.items()):
        print(f"--- xDS for group {group} ---")
        print(diff if diff else "(no change)")
    return 0


def _read_file(path: str) -> str:
    from controlplane.errors import FieldError, InvalidInputError

    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise InvalidInputError([FieldError("-f", f"cannot read {path}: {exc.strerror}")]) from exc


def get(conn: Connection, kind_text: str, name: str | None, fmt: str | None) -> int:
    if kind_text.lower() in ("proxies", "proxy"):
        return _get_proxies(conn, name, fmt)
    if kind_text.lower() in ("endpoints", "endpoint"):
        return _get_endpoints(conn, name, fmt)
    kind = canonical_kind(kind_text)
    response = conn.stub().Get(
        admin_pb2.GetRequest(kind=kind, name=name or ""),
        metadata=conn.metadata(),
        timeout=conn.timeout,
    )
    docs = [json.loads(d) for d in response.documents]
    if fmt:
        print(documents(docs, fmt, single=bool(name)))
        return 0
    if not docs:
        print(f"No {kind} resources found.", file=sys.stderr)
        return 0
    headers, row = _COLUMNS[kind]
    print(table(headers, [row(d) for d in docs]))
    return 0


def delete(conn: Connection, kind_text: str, name: str) -> int:
    kind = canonical_kind(kind_text)
    response = conn.stub().Delete(
        admin_pb2.DeleteRequest(kind=kind, name=name),
        metadata=conn.metadata(),
        timeout=conn.timeout,
    )
    print(f"{response.change.kind.lower()}/{response.change.name} {response.change.action}")
    return 0


def _get_proxies(conn: Connection, name: str | None, fmt: str | None) -> int:
    response = conn.stub().ListProxies(
        admin_pb2.ListProxiesRequest(), metadata=conn.metadata(), timeout=conn.timeout
    )
    proxies = [p for p in response.proxies if not name or p.node_id == name]
    if fmt:
        docs = [_proxy_doc(p) for p in proxies]
        print(documents(docs, fmt, single=bool(name) and len(docs) == 1))
        return 0
    rows = []
    for p in proxies:
        acked = " ".join(
            f"{DISCOVERY_SERVICE.get(t.type_url, t.type_url)}={t.acked_version[:8] or '-'}"
            for t in p.types
        )
        nack = next((t.last_nack for t in p.types if t.last_nack), "")
        rows.append([p.node_id, p.group, p.protocol, acked, nack[:160]])
    if not rows:
        print("No proxies connected.", file=sys.stderr)
        return 0
    print(table(["NODE", "GROUP", "PROTOCOL", "ACKED", "LAST-NACK"], rows))
    return 0


def _get_endpoints(conn: Connection, upstream: str | None, fmt: str | None) -> int:
    from controlplane.errors import FieldError, InvalidInputError

    if not upstream:
        raise InvalidInputError([FieldError("UPSTREAM", "get endpoints needs the upstream's "
                                            "name, e.g. `controlplane get endpoints payments`")])
    response = conn.stub().GetEndpoints(
        admin_pb2.GetEndpointsRequest(upstream=upstream), metadata=conn.metadata(),
        timeout=conn.timeout)
    doc = json.loads(response.document)
    if fmt:
        print(documents([doc], fmt, single=True))
        return 0
    rows = []
    for version in doc["versions"]:
        names = {n["name"]: n for n in version["names"]}
        shown = set()
        for address in version["addresses"]:
            source: str = address["source"]
            name = source.removeprefix("dns:") if source.startswith("dns:") else None
            shown.add(name)
            rows.append([version["version"], address["address"], source,
                         _name_status(names.get(name) if name else None)])
        for name, status in names.items():  # names with no address to show
            if name not in shown:
                rows.append([version["version"], "-", f"dns:{name}", _name_status(status)])
        rows += [[version["version"], "-", source, why]  # leased sources with none yet
                 for source, why in _idle_sources(version)]
    print(table(["VERSION", "ADDRESS", "SOURCE", "STATUS"], rows))
    return 0


def _idle_sources(version: dict[str, Any]) -> list[tuple[str, str]]:
    """A version's `endpointsFrom` sources that give it no address now."""
    taken = version.get("endpointsFrom") or {}
    sources = [a["source"] for a in version["addresses"]]
    out = []
    if taken.get("etcd") and not any(s.startswith("etcd:") for s in sources):
        out.append((f"etcd:{taken['etcd']}", "no key in etcd's naming format under it"))
    if taken.get("registered") and not any(s.startswith("registered:") for s in sources):
        out.append(("registered:", "none registered (controlplane endpoint register)"))
    return out


def _name_status(status: dict[str, Any] | None) -> str:
    if status is None:
        return "-"
    if status["status"] == "failing":
        return f"failing: {status['error']} (keeping the last addresses)"
    if status["status"] == "pending":
        return "pending: not resolved yet"
    return "ok"


def _proxy_doc(p: admin_pb2.Proxy) -> dict[str, Any]:
    return {
        "nodeId": p.node_id,
        "group": p.group,
        "protocol": p.protocol,
        "peer": p.peer,
        "connectedAt": p.connected_at,
        "types": {
            DISCOVERY_SERVICE.get(t.type_url, t.type_url): {
                "typeUrl": t.type_url,
                "sentVersion": t.sent_version,
                "ackedVersion": t.acked_version,
                "lastNack": t.last_nack,
                "lastNackVersion": t.last_nack_version,
            }
            for t in p.types
        },
    }


def _spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc.get("spec", {})
    return spec


def _name(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["name"])


def _traffic(doc: dict[str, Any]) -> str:
    """`v1=90%,v2=10%`, per group (`edge:…`) when groups differ; `-` when no route
    reaches the upstream."""
    entries = doc.get("status", {}).get("traffic", [])
    by_group: dict[str, list[str]] = {}
    for e in entries:
        by_group.setdefault(e["group"], []).append("error" if "error" in e else ",".join(
            f"{v}={p:g}%" for v, p in e["weights"].items()))
    splits = {g: " / ".join(s) for g, s in by_group.items()}
    if len(set(splits.values())) == 1:
        return next(iter(splits.values()))
    return " ".join(f"{g}:{s}" for g, s in sorted(splits.items())) or "-"


Row = Callable[[dict[str, Any]], list[str]]

_COLUMNS: dict[str, tuple[list[str], Row]] = {
    "Upstream": (
        ["NAME", "ACTIVE", "VERSIONS", "ENDPOINTS", "TRAFFIC"],
        lambda d: [
            _name(d),
            _spec(d)["active"],
            ",".join(sorted(_spec(d)["versions"])),
            str(sum(len(v.get("endpoints", [])) for v in _spec(d)["versions"].values())),
            _traffic(d),
        ],
    ),
    "Route": (
        ["NAME", "LISTENER", "HOSTS", "PREFIX", "UPSTREAM"],
        lambda d: [
            _name(d),
            _spec(d)["listener"],
            ",".join(_spec(d).get("hosts", ["*"])),
            _spec(d).get("prefix", "/"),
            _spec(d)["upstream"],
        ],
    ),
    "Listener": (
        ["NAME", "GROUP", "ADDRESS", "TLS"],
        lambda d: [
            _name(d),
            _spec(d)["group"],
            f"{_spec(d).get('address', '0.0.0.0')}:{_spec(d)['port']}",
            ("mtls" if _spec(d)["tls"].get("mtls") else "tls") if _spec(d).get("tls") else "-",
        ],
    ),
    "Credential": (
        ["NAME", "HEADER", "SOURCE"],
        lambda d: [
            _name(d),
            _spec(d)["header"],
            f"file:{_spec(d)['valueFrom']['file']}" if "valueFrom" in _spec(d) else "inline",
        ],
    ),
    "Rollout": (
        ["NAME", "UPSTREAM", "FROM", "TO", "STRATEGY", "PHASE", "WEIGHT", "PROXIES"],
        lambda d: [
            _name(d),
            _spec(d)["upstream"],
            _spec(d)["from"],
            _spec(d)["to"],
            _spec(d).get("strategy", "canary"),
            d.get("status", {}).get("phase", Phase.PENDING.value),
            f"{d.get('status', {}).get('weight', 0):g}%",
            "{acked}/{total}".format(**d.get("status", {}).get("proxies",
                                                               {"acked": 0, "total": 0})),
        ],
    ),
    "ProxyGroup": (
        ["NAME", "EDGE", "DESCRIPTION"],
        lambda d: [
            _name(d), str(_spec(d).get("edge", False)).lower(), _spec(d).get("description", "")
        ],
    ),
}
