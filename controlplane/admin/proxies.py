"""The connected proxies as the admin API shows them (`get proxies`): the xDS registry's
view mapped to admin messages, each NACK traced to the resource that caused it."""

from __future__ import annotations

from controlplane.api import admin_pb2
from controlplane.translate.trace import trace_nack
from controlplane.xds.proxies import ProxyRegistry


def proxy_messages(registry: ProxyRegistry) -> list[admin_pb2.Proxy]:
    return [
        admin_pb2.Proxy(
            node_id=p.node_id,
            group=p.group,
            protocol=p.protocol,
            peer=p.peer,
            connected_at=p.connected_at,
            types=[
                admin_pb2.TypeState(
                    type_url=t.type_url,
                    acked_version=t.acked_version or "",
                    sent_version=t.sent_version or "",
                    last_nack=trace_nack(t.last_nack or ""),
                    last_nack_version=t.last_nack_version or "",
                )
                for t in p.types
            ],
        )
        for p in registry.list()
    ]
