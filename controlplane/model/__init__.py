"""Validated resources and the desired state; imports nothing else of ours but errors."""

from controlplane.model.documents import (
    canonical_kind,
    from_stored,
    parse_yaml,
    to_document,
    to_stored,
    validate_documents,
)
from controlplane.model.duration import Duration, parse_duration
from controlplane.model.resources import (
    API_VERSION,
    KINDS,
    Credential,
    Listener,
    ProxyGroup,
    Resource,
    Rollout,
    Route,
    Upstream,
)
from controlplane.model.state import DesiredState

__all__ = [
    "API_VERSION",
    "KINDS",
    "Credential",
    "DesiredState",
    "Duration",
    "Listener",
    "ProxyGroup",
    "Resource",
    "Rollout",
    "Route",
    "Upstream",
    "canonical_kind",
    "from_stored",
    "parse_duration",
    "parse_yaml",
    "to_document",
    "to_stored",
    "validate_documents",
]
