"""An immutable, versioned set of xDS resources for one proxy group.

Each resource is serialized once (deterministically) and wrapped once as a
`google.protobuf.Any` (SotW) and once as a discovery `Resource` (Delta); every
stream of every proxy shares those objects. Versions are content hashes, so the
same resources give the same versions in any process, after any restart, on
any replica: an unchanged state pushes nothing.

Like go-control-plane's `Snapshot.Consistent()`, `check()` verifies that every
name a resource depends on (EDS cluster, RDS route config, ADS secret, routed
cluster) is in the snapshot; it reports every problem at once.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from controlplane.errors import InconsistentSnapshotError
from controlplane.xds import wire
from controlplane.xds.references import Reference, references_of
from controlplane.xds.resources import (
    PUSH_ORDER,
    SECRET,
    matches_type,
    resource_name,
    short_kind,
)

_HASH_CHARS = 16
_MEMO_NAMES_SLACK = 1024
"""A snapshot keeps the bodies of explicit subscriptions while their names add up to at
most its own resources' count plus this; others are serialized per response. A group's
proxies share a few subscriptions, while a hostile one naming 100k missing resources
must not be held for the snapshot's life."""


def _digest(data: bytes, key: bytes | None = None) -> str:
    if key is not None:
        return hmac.new(key, data, hashlib.sha256).hexdigest()[:_HASH_CHARS]
    return hashlib.sha256(data).hexdigest()[:_HASH_CHARS]


def type_version(pairs: Iterable[tuple[str, str]]) -> str:
    """The version of a type: a hash over its sorted (name, resource version) pairs."""
    h = hashlib.sha256()
    for name, version in sorted(pairs):
        h.update(name.encode())
        h.update(b"\x00")
        h.update(version.encode())
        h.update(b"\n")
    return h.hexdigest()[:_HASH_CHARS]


EMPTY_VERSION = type_version(())
"""The version of a type with no resources (also of any type URL we do not serve)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource, serialized once. `packed` and `resource` are shared: never mutate them."""

    name: str
    version: str
    packed: any_pb2.Any
    """The resource as a google.protobuf.Any, for SotW responses."""
    resource: discovery_pb2.Resource
    """name + version + the Any, for Delta responses."""


_NO_ENTRIES: Mapping[str, Entry] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Changes:
    """The names of one type that are new or changed, and those that are gone."""

    changed: frozenset[str]
    removed: frozenset[str]


NO_CHANGES = Changes(frozenset(), frozenset())


class Snapshot:
    """Immutable resources of one group, keyed by type URL then name (sorted).

    Build with `Snapshot.build`; instances are safe to share between tasks.
    """

    __slots__ = ("_entries", "_memo_names", "_problems", "_references", "_since", "_versions",
                 "_wire")

    def __init__(
        self,
        entries: Mapping[str, Mapping[str, Entry]],
        references: tuple[Reference, ...],
        problems: tuple[str, ...],
    ) -> None:
        self._entries = MappingProxyType({t: MappingProxyType(dict(e)) for t, e in entries.items()})
        self._versions = MappingProxyType(
            {t: type_version((n, e.version) for n, e in es.items()) for t, es in entries.items()}
        )
        self._references = references
        self._problems = problems
        self._wire: dict[tuple[str, str, frozenset[str] | str | None], bytes] = {}
        self._memo_names = 0
        """Response bodies and framed resources, serialized on first use."""
        self._since: dict[tuple[str, str], Changes] = {}
        """(type URL, an older version of it) → what changed since (`note_predecessor`)."""

    @classmethod
    def build(cls, resources: Mapping[str, Sequence[Message]], *,
              secret_key: bytes | None = None) -> Snapshot:
        """Serialize, wrap and version `resources` ({type URL: messages}).

        Every one of the five served type URLs gets an entry (empty when absent).
        Duplicate or empty names are consistency problems (see `check`). With
        `secret_key`, SDS versions are HMACs under it rather than plain hashes of the key
        material and credential values they carry: versions are reported to etcd and
        logged, where a plain hash would let a reader test guesses of a weak value.

        Errors:
            InconsistentSnapshotError: a type URL we do not serve, or a message
                of another type than its key says.
        """
        unusable = [
            f"{type_url}: not a served type" for type_url in resources if type_url not in PUSH_ORDER
        ]
        unusable += [
            f"{short_kind(type_url)}: got a {m.DESCRIPTOR.full_name}"
            for type_url, messages in resources.items()
            if type_url in PUSH_ORDER
            for m in messages
            if not matches_type(type_url, m)
        ]
        if unusable:
            raise InconsistentSnapshotError("cannot build a snapshot: " + "; ".join(unusable))
        entries: dict[str, dict[str, Entry]] = {}
        references: list[Reference] = []
        problems: list[str] = []
        for type_url in PUSH_ORDER:
            built: list[Entry] = []
            for message in resources.get(type_url, ()):
                name = resource_name(type_url, message)
                if not name:
                    problems.append(f"a {short_kind(type_url)} has no name")
                    continue
                built.append(_entry(type_url, name, message,
                                    secret_key if type_url == SECRET else None))
                references.extend(references_of(type_url, name, message))
            by_name: dict[str, Entry] = {}
            for entry in sorted(built, key=lambda e: e.name):
                if entry.name in by_name:
                    problems.append(f"{short_kind(type_url)} {entry.name!r} appears twice")
                by_name[entry.name] = entry
            entries[type_url] = by_name
        return cls(entries, tuple(references), tuple(problems))

    def version(self, type_url: str) -> str:
        """The version of one type; `EMPTY_VERSION` for a type with no resources."""
        return self._versions.get(type_url, EMPTY_VERSION)

    @property
    def versions(self) -> Mapping[str, str]:
        """{type URL: version} for the five served types."""
        return self._versions

    def resources(self, type_url: str) -> Mapping[str, Entry]:
        """{name: entry} of one type, sorted by name; empty for an unknown type."""
        return self._entries.get(type_url, _NO_ENTRIES)

    def names(self, type_url: str) -> list[str]:
        """The resource names of one type, sorted."""
        return list(self.resources(type_url))

    def message(self, type_url: str, name: str) -> Message:
        """A fresh, parsed copy of one resource (for inspection; not used to serve).

        Errors:
            KeyError: no such resource.
        """
        packed = self.resources(type_url)[name].packed
        inner: Message = _message_class(packed.type_url)()
        inner.ParseFromString(packed.value)
        return inner

    def sotw_body(self, type_url: str, names: frozenset[str] | None) -> bytes:
        """A SotW DiscoveryResponse of this type without its nonce (see `wire`): every
        resource (`names` None) or those of `names` that exist. Serialized once per
        snapshot and subscription, for every stream that sends it."""
        key = ("sotw", type_url, names)
        body = self._wire.get(key)
        if body is None:
            entries = self.resources(type_url)
            chosen = entries.values() if names is None else \
                [entries[n] for n in sorted(names) if n in entries]
            body = wire.sotw_body(self.version(type_url), type_url,
                                  (wire.field(wire.RESOURCES, e.packed.SerializeToString())
                                   for e in chosen))
            if names is None:
                self._wire[key] = body
            elif (self._memo_names + len(names)
                  <= sum(map(len, self._entries.values())) + _MEMO_NAMES_SLACK):
                self._memo_names += len(names)
                self._wire[key] = body
        return body

    def delta_resource(self, type_url: str, name: str) -> bytes:
        """One resource as a framed DeltaDiscoveryResponse.resources field, serialized once."""
        key = ("delta", type_url, name)
        framed = self._wire.get(key)
        if framed is None:
            framed = self._wire[key] = wire.field(
                wire.RESOURCES, self.resources(type_url)[name].resource.SerializeToString())
        return framed

    def note_predecessor(self, older: Snapshot) -> None:
        """Remember what changed since `older`, type by type, so that a Delta stream
        brought to `older` finds what to send in O(changes) instead of comparing every
        resource it holds (10k clusters for each of 1,000 streams per change otherwise). Derived
        data like the wire memo: the snapshot's content does not change."""
        for type_url, version in self._versions.items():
            old_version = older.version(type_url)
            if old_version == version or (type_url, old_version) in self._since:
                continue
            old, new = older.resources(type_url), self.resources(type_url)
            self._since[(type_url, old_version)] = Changes(
                changed=frozenset(n for n, e in new.items()
                                  if (o := old.get(n)) is None or o.version != e.version),
                removed=frozenset(n for n in old if n not in new))

    def changes_since(self, type_url: str, old_version: str) -> Changes | None:
        """What changed in a type since its `old_version`; None when not known (only the
        predecessors given to `note_predecessor` are)."""
        if old_version == self.version(type_url):
            return NO_CHANGES
        return self._since.get((type_url, old_version))

    def consistency_problems(self) -> list[str]:
        """Every reason this snapshot cannot be served, sorted; empty when consistent."""
        problems = set(self._problems)
        for ref in self._references:
            if ref.name not in self.resources(ref.target):
                problems.add(f"{ref}, which the snapshot does not contain")
        return sorted(problems)

    def check(self) -> None:
        """Raise unless consistent.

        Errors:
            InconsistentSnapshotError: lists every problem.
        """
        problems = self.consistency_problems()
        if problems:
            raise InconsistentSnapshotError(
                f"inconsistent snapshot ({len(problems)} problems): " + "; ".join(problems)
            )

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{short_kind(t)}={len(self.resources(t))}@{self.version(t)}" for t in PUSH_ORDER
        )
        return f"Snapshot({parts})"


def _entry(type_url: str, name: str, message: Message, key: bytes | None = None) -> Entry:
    data = message.SerializeToString(deterministic=True)
    version = _digest(data, key)
    packed = any_pb2.Any(type_url=type_url, value=data)
    resource = discovery_pb2.Resource(name=name, version=version, resource=packed)
    return Entry(name=name, version=version, packed=packed, resource=resource)


def _message_class(type_url: str) -> type[Message]:
    descriptor = descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls
