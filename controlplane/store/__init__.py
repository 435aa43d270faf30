"""etcd as the single source of truth: key layout, CAS writes, watch, audit, embedded etcd."""

from controlplane.store.audit import AuditEntry, AuditRecord
from controlplane.store.etcd_process import EmbeddedEtcd
from controlplane.store.keys import Keys
from controlplane.store.store import ApplyResult, Change, Store

__all__ = ["ApplyResult", "AuditEntry", "AuditRecord", "Change", "EmbeddedEtcd", "Keys", "Store"]
