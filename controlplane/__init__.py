"""An Envoy xDS control plane for upstream upgrades.

Data flows one way (ARCHITECTURE.md):
admin/CLI → store (etcd) → rollout engine → translate → snapshot cache → xDS server → Envoy.
"""

__version__ = "0.1.0"
