"""Each replica's anchor of the audit log, outside etcd: what truncation and wipes hit.

A key stops anyone without it from re-hashing entries, but not from deleting the
last entries and moving the head back to an older, genuine one, nor from wiping the
log. So every replica remembers the last (seq, hash) it wrote or verified in
`DATA_DIR/audit.anchor` (0600, replaced atomically) and `audit --verify` compares the
log in etcd against it.

The anchor only moves forward, and only along the chain it anchored: a head that does
not descend from it (the log was truncated, wiped or rewritten) leaves it where it is,
so the evidence stays until an operator has looked and removed the file (the next
write or verify re-anchors at the head then).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from controlplane.store.audit import AuditEntry, AuditHead
from controlplane.store.keys import Keys
from controlplane.store.kv import EtcdKV

log = logging.getLogger(__name__)

ANCHOR_FILE = "audit.anchor"
"""In the data dir: {"seq": N, "hash": "..."}."""
AUDIT_KEY_PURPOSE = b"audit-chain/v1"
"""What the audit key is derived for from the sealing key (`SealingKey.derive`)."""


class AuditAnchor:
    """The last (seq, hash) of the audit log this replica saw, kept in `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem = ""
        """Why the file cannot be read (then it is never overwritten); empty when fine."""
        self._head = self._read()

    @property
    def head(self) -> AuditHead:
        return self._head

    def _read(self) -> AuditHead:
        try:
            return AuditHead.from_json(self.path.read_bytes())
        except FileNotFoundError:
            return AuditHead()
        except (OSError, ValueError) as exc:
            self.problem = (f"the audit anchor {self.path} is unreadable ({exc}): truncation "
                            "cannot be checked; look at the log, then remove the file to "
                            "re-anchor at the current head")
            return AuditHead()

    def advance(self, head: AuditHead) -> None:
        """Anchor at `head` when it is further on (the caller checked it descends). A
        file that cannot be written is logged and the anchor stays where it was."""
        if self.problem or head.seq <= self._head.seq:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(head.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # atomic: a crash leaves the old anchor or the new
        except OSError as exc:
            log.error("cannot write the audit anchor %s (%s): it stays at entry %d",
                      self.path, exc, self._head.seq)
            return
        self._head = head

    async def follow(self, kv: EtcdKV, keys: Keys, head: AuditHead, *,
                     via: AuditHead | None = None, behind_ok: bool = False) -> str:
        """Advance to `head` if it descends from the anchor; otherwise keep the anchor
        and return what contradicts it (also logged).

        Args:
            via: the head `head` was chained onto, when known: if that is the anchor,
                `head` descends from it without a read.
            behind_ok: a head behind the anchor is no contradiction (one of our own
                writes finishing after a later one); `verify` still compares the log.
        """
        if via is not None and via == self._head:
            self.advance(head)
            return ""
        why = await contradiction(kv, keys, head, self._head)
        if why and not (behind_ok and head.seq < self._head.seq):
            log.error("the audit log in etcd contradicts %s: %s; `controlplane audit "
                      "--verify` reports it", self.path, why)
            return why
        self.advance(head)
        return ""


async def contradiction(kv: EtcdKV, keys: Keys, head: AuditHead, anchor: AuditHead) -> str:
    """Why a log whose head is `head` cannot descend from `anchor`; empty when it can.
    One etcd read, and only when the head is past the anchor."""
    if not anchor.seq or head == anchor:
        return ""
    if head.seq < anchor.seq:
        return f"its head is entry {head.seq}, this replica saw entry {anchor.seq}"
    if head.seq == anchor.seq:
        return f"entry {head.seq} is not the one this replica saw"
    got = await kv.get(keys.audit_entry(anchor.seq))
    try:
        seen = None if got is None else AuditEntry.from_json(got.value)
    except (ValueError, TypeError):
        seen = None
    if seen is None or seen.hash != anchor.hash:
        return f"entry {anchor.seq} is not the one this replica saw"
    return ""
