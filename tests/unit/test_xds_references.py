"""The snapshot's reference walk: which message types it needs to look into."""

from __future__ import annotations


def test_the_reference_walk_skips_types_that_cannot_refer() -> None:
    from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
    from envoy.config.listener.v3 import listener_pb2

    from controlplane.xds.references import _may_refer

    assert not _may_refer(endpoint_components_pb2.LbEndpoint.DESCRIPTOR)  # every endpoint
    assert _may_refer(endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR)  # (LEDS config sources)
    assert _may_refer(listener_pb2.Listener.DESCRIPTOR)  # HCM inside an Any: RDS, SDS
