"""The vault: secret records in etcd, created, rotated and read with compare-and-swap.

Any replica may issue or rotate: every write is guarded by the mod revisions it read,
so two replicas racing to rotate one certificate write it once; the loser re-reads.
Every write goes through the `Committer` the wiring supplies, which appends audit
entries (summaries only: serials and generations, never key material or values).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

from pydantic import SecretStr

from controlplane.errors import (
    ConflictError,
    ControlPlaneError,
    FieldError,
    InvalidInputError,
    NotFoundError,
)
from controlplane.model import DesiredState
from controlplane.model.envoy_rules import credential_value_problem
from controlplane.secrets.ca import CertificateAuthority, IssuedCertificate
from controlplane.secrets.credentials import CredentialRotation, check_new_value
from controlplane.secrets.crypto import SealingKey
from controlplane.secrets.files import CredentialFiles
from controlplane.secrets.records import (
    CertRecord,
    CredentialRecord,
    PreviousCa,
    decode_ca,
    decode_cert,
    decode_credential,
    decode_previous_ca,
    encode_ca,
    encode_cert,
    encode_credential,
    encode_previous_ca,
    legacy_source_digest,
    source_digest,
)
from controlplane.spiffe import SERVER_ID

log = logging.getLogger(__name__)

DEFAULT_CERT_LIFETIME_S = 24 * 3600.0
ROTATE_FRACTION = (0.45, 0.55)
"""A certificate is rotated at half its lifetime, ±5 % jitter so groups do not rotate at once."""
CAS_ATTEMPTS = 5
SYSTEM_ACTOR = "controlplane"


class SecretKV(Protocol):
    """The part of the store's EtcdKV the vault reads with."""

    async def range(self, prefix: bytes, end: bytes | None = None) -> Any: ...

    def watch(self, prefix: bytes, start_revision: int,
              end: bytes | None = None) -> AsyncIterator[Any]: ...


class SecretKeys(Protocol):
    """Where the records live (store.keys.Keys provides these)."""

    @property
    def secrets(self) -> bytes: ...

    @property
    def secret_ca(self) -> bytes: ...

    def secret_certificate(self, group: str) -> bytes: ...

    def secret_credential(self, name: str) -> bytes: ...


@dataclass(frozen=True)
class AuditNote:
    """One audit entry to append with a write (no secret in any field)."""

    actor: str
    action: str
    kind: str
    name: str
    reason: str = ""
    after: Mapping[str, Any] | None = None


Committer = Callable[
    [Mapping[bytes, bytes], Mapping[bytes, int], Sequence[bytes], Sequence[AuditNote]],
    Awaitable[bool],
]
"""(puts, expect {key: mod revision, 0 = absent}, deletes, audit) → whether it was written."""


@dataclass(frozen=True)
class Material:
    """What translate needs: the CAs to trust, group certificates, credential values
    (redacted). During a CA rotation `ca_pem` is a bundle of two CAs and `ca_serials`
    names both, the one issuing certificates first."""

    ca_pem: str = ""
    ca_serials: tuple[str, ...] = ()
    ca_next: bool = False
    """A CA rotation's first phase: `ca_serials[1]` is the new CA, trusted but not yet
    issuing (otherwise `ca_serials[1]`, if any, is the previous CA, still trusted)."""
    certificates: Mapping[str, IssuedCertificate] = field(
        default_factory=lambda: MappingProxyType({}))
    credentials: Mapping[str, SecretStr] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class CaRotation:
    """What `rotate_ca` did: CA serials (previous is "" for a first CA) and, per group,
    (old certificate serial, new certificate serial)."""

    previous_serial: str
    serial: str
    certificates: Mapping[str, tuple[str, str]]


def tls_groups(state: DesiredState) -> list[str]:
    """Groups that need a certificate, sorted: those with a `tls: {certificate: auto}`
    listener, and those whose routes reach an upstream version with
    `tls: {clientCertificate: auto}` (upstream mTLS: Envoy presents the group's)."""
    groups = {lst.spec.group for lst in state.listeners.values() if lst.spec.tls}
    for route in state.routes.values():
        listener = state.listeners.get(route.spec.listener)
        upstream = state.upstreams.get(route.spec.upstream)
        if listener is None or upstream is None:
            continue
        if any(v.tls is not None and v.tls.client_certificate == "auto"
               for v in upstream.spec.versions.values()):
            groups.add(listener.spec.group)
    return sorted(groups)


def needs_ca(state: DesiredState) -> bool:
    """Whether anything verifies against our CA or carries a certificate it issues."""
    return bool(tls_groups(state)) or any(
        v.tls is not None and v.tls.ca_file is None
        for ups in state.upstreams.values() for v in ups.spec.versions.values())


@dataclass
class _Read:
    revision: int
    mods: dict[bytes, int]
    ca: CertificateAuthority | None
    certs: dict[str, CertRecord]
    credentials: dict[str, CredentialRecord]
    unreadable: list[bytes] = field(default_factory=list)
    previous_ca: PreviousCa | None = None
    next_ca: CertificateAuthority | None = None


class Vault:
    """Secret records under `keys.secrets`.

    Args:
        kv: etcd reads and watches.
        keys: the key layout.
        sealing: seals key material and values before they are written.
        commit: writes with compare-and-swap and audit (see `Committer`).
        cert_lifetime_s: lifetime of group certificates (rotated at about half of it).
        files: where credential files may be read from (default: nowhere).
    """

    def __init__(
        self, kv: SecretKV, keys: SecretKeys, sealing: SealingKey, commit: Committer, *,
        cert_lifetime_s: float = DEFAULT_CERT_LIFETIME_S,
        clock: Callable[[], float] = time.time, rng: random.Random | None = None,
        files: CredentialFiles | None = None,
    ) -> None:
        self._kv = kv
        self._keys = keys
        self._sealing = sealing
        self.files = files or CredentialFiles()
        self._commit = commit
        self.cert_lifetime_s = cert_lifetime_s
        self._clock = clock
        self._rng = rng or random.Random()
        # Beside vault/ca, inside the watched prefix, outside certs/ and credentials/.
        self._previous_ca_key = keys.secret_ca + b"-previous"
        self._next_ca_key = keys.secret_ca + b"-next"

    # ---- reads ------------------------------------------------------------------------

    async def _read(self) -> _Read:
        got = await self._kv.range(self._keys.secrets)
        out = _Read(int(got.revision), {}, None, {}, {})
        cert_prefix = self._keys.secret_certificate("")
        cred_prefix = self._keys.secret_credential("")
        for kv in got.kvs:
            key: bytes = kv.key
            out.mods[key] = int(kv.mod_revision)
            try:
                if key == self._keys.secret_ca:
                    cert_pem, key_pem = decode_ca(kv.value, self._sealing)
                    out.ca = CertificateAuthority.from_pem(cert_pem, key_pem)
                elif key == self._previous_ca_key:
                    out.previous_ca = decode_previous_ca(kv.value)
                elif key == self._next_ca_key:
                    cert_pem, key_pem = decode_ca(kv.value, self._sealing)
                    out.next_ca = CertificateAuthority.from_pem(cert_pem, key_pem)
                elif key.startswith(cert_prefix):
                    out.certs[key[len(cert_prefix):].decode()] = decode_cert(
                        kv.value, self._sealing)
                elif key.startswith(cred_prefix):
                    out.credentials[key[len(cred_prefix):].decode()] = decode_credential(
                        kv.value, self._sealing)
            except (ControlPlaneError, ValueError, KeyError, TypeError) as exc:
                log.error("ignoring unreadable secret record %s: %s", key.decode(), exc)
                out.unreadable.append(key)
        return out

    async def load(self) -> tuple[Material, int]:
        """Every stored secret, unsealed, and the etcd revision it was read at."""
        read = await self._read()
        trusted = [(read.ca.serial, read.ca.cert_pem)] if read.ca else []
        if read.next_ca is not None:
            trusted.append((read.next_ca.serial, read.next_ca.cert_pem))
        if read.previous_ca is not None:
            trusted.append((read.previous_ca.serial, read.previous_ca.cert_pem))
        return Material(
            ca_pem="".join(pem for _, pem in trusted),
            ca_serials=tuple(serial for serial, _ in trusted),
            ca_next=read.next_ca is not None,
            certificates=MappingProxyType({g: r.cert for g, r in sorted(read.certs.items())}),
            credentials=MappingProxyType(
                {n: r.value for n, r in sorted(read.credentials.items())}),
        ), read.revision

    async def rotation_times(self) -> dict[str, float]:
        """Group → when its certificate is due for rotation (epoch seconds)."""
        return {g: r.rotate_at for g, r in (await self._read()).certs.items()}

    async def changes(self, start_revision: int) -> AsyncIterator[int]:
        """Yields a revision each time a secret record changes (etcd watch)."""
        async for event in self._kv.watch(self._keys.secrets, start_revision):
            yield int(event.mod_revision)

    # ---- writes -----------------------------------------------------------------------

    def _issue(self, ca: CertificateAuthority, group: str, now: float) -> CertRecord:
        cert = ca.issue(group, now=now, lifetime_s=self.cert_lifetime_s)
        fraction = self._rng.uniform(*ROTATE_FRACTION)
        return CertRecord(cert, now + self.cert_lifetime_s * fraction)

    async def ensure(self, state: DesiredState) -> list[str]:
        """Create what `state` needs and is missing, rotate what is due. Returns what was done.

        The CA; a certificate for every TLS group (new, or past its rotation time);
        the value of every Credential whose record is missing or names another source;
        the records of deleted Credentials are removed.
        """
        read = await self._read()
        if read.unreadable:  # sealed with another key: never overwrite what we cannot read
            log.error("not issuing or rotating secrets: %d record(s) cannot be unsealed",
                      len(read.unreadable))
            return []
        now = self._clock()
        puts: dict[bytes, bytes] = {}
        expect: dict[bytes, int] = {}
        deletes: list[bytes] = []
        notes: list[AuditNote] = []
        ca = read.ca
        groups = tls_groups(state)
        if ca is None and (groups or needs_ca(state)):
            ca = CertificateAuthority.create(now=now)
            puts[self._keys.secret_ca] = encode_ca(ca.cert_pem, ca.key_pem, self._sealing)
            expect[self._keys.secret_ca] = 0
            notes.append(AuditNote(SYSTEM_ACTOR, "ca/create", "CertificateAuthority", "ca"))
        for group in groups:
            old = read.certs.get(group)
            if old is not None and now < old.rotate_at:
                continue
            assert ca is not None
            self._put_cert(read, ca, group, now, puts, expect, notes, actor=SYSTEM_ACTOR,
                           action="cert/issue" if old is None else "cert/rotate",
                           reason="" if old is None else "half of its lifetime passed")
        for name, credential in state.credentials.items():
            source = source_digest(credential, self._sealing)
            old_cred = read.credentials.get(name)
            refused = (self.files.refusal(credential.spec.value_from.file)
                       if credential.spec.value_from is not None else None)
            if refused is not None:
                # Applied before the file was off limits (or the limits changed): what
                # it read is never sent again.
                log.error("Credential/%s: spec.valueFrom.file: %s", name, refused)
                if old_cred is not None:
                    key = self._keys.secret_credential(name)
                    deletes.append(key)
                    expect[key] = read.mods[key]
                    notes.append(AuditNote(SYSTEM_ACTOR, "credential/refuse", "Credential",
                                           name, f"spec.valueFrom.file: {refused}"))
                continue
            if old_cred is not None and old_cred.source == source:
                continue
            try:
                value = self.files.read(credential)
            except InvalidInputError as exc:
                log.error("Credential/%s has no value yet: %s", name, exc)
                continue
            if old_cred is not None and old_cred.is_revoked(value):
                log.error("Credential/%s: its new source holds a value revoked by an "
                          "emergency rotation; generation %d stays sent until it names a "
                          "new value", name, old_cred.generation)
                continue
            self._put_credential(read, name, value, source, now, puts, expect, notes,
                                 actor=SYSTEM_ACTOR, action="credential/load")
        for name in sorted(set(read.credentials) - set(state.credentials)):
            key = self._keys.secret_credential(name)
            deletes.append(key)
            expect[key] = read.mods[key]
        if not puts and not deletes:
            return []
        if not await self._commit(puts, expect, deletes, notes):
            log.info("another replica wrote secrets first; re-reading")
            return []
        return [f"{n.action} {n.name}" for n in notes] + [f"delete {k.decode()}" for k in deletes]

    async def migrate_sources(self, state: DesiredState) -> list[str]:
        """Rewrite credential records whose source fingerprint is an unsalted SHA-256
        (written before keyed ones) with the keyed HMAC: same value, same generation, so
        nothing is re-read or rotated. Audited (`credential/migrate`). Returns the names
        rewritten ([] also when another replica won the race: it did the same).
        """
        read = await self._read()
        puts: dict[bytes, bytes] = {}
        expect: dict[bytes, int] = {}
        notes: list[AuditNote] = []
        for name, record in sorted(read.credentials.items()):
            credential = state.credentials.get(name)
            if credential is None or record.source != legacy_source_digest(credential):
                continue
            key = self._keys.secret_credential(name)
            puts[key] = encode_credential(
                replace(record, source=source_digest(credential, self._sealing)),
                self._sealing)
            expect[key] = read.mods[key]
            notes.append(AuditNote(
                SYSTEM_ACTOR, "credential/migrate", "Credential", name,
                "its source fingerprint is now a keyed HMAC, not an unsalted SHA-256",
                {"generation": record.generation}))
        if not puts or not await self._commit(puts, expect, [], notes):
            return []
        return [n.name for n in notes]

    def _put_cert(self, read: _Read, ca: CertificateAuthority, group: str, now: float,
                  puts: dict[bytes, bytes], expect: dict[bytes, int], notes: list[AuditNote],
                  *, actor: str, action: str, reason: str) -> CertRecord:
        key = self._keys.secret_certificate(group)
        record = self._issue(ca, group, now)
        puts[key] = encode_cert(record, self._sealing)
        expect[key] = read.mods.get(key, 0)
        old = read.certs.get(group)
        notes.append(AuditNote(actor, action, "Certificate", group, reason, {
            "serial": record.cert.serial, "notAfter": record.cert.not_after,
            "previousSerial": old.cert.serial if old else None,
        }))
        return record

    def _put_credential(self, read: _Read, name: str, value: SecretStr, source: str, now: float,
                        puts: dict[bytes, bytes], expect: dict[bytes, int],
                        notes: list[AuditNote], *, actor: str, action: str,
                        reason: str = "", revoked: tuple[SecretStr, ...] | None = None) -> int:
        key = self._keys.secret_credential(name)
        old = read.credentials.get(name)
        generation = (old.generation + 1) if old else 1
        if revoked is None:
            revoked = old.revoked if old else ()
        puts[key] = encode_credential(
            CredentialRecord(value, source, generation, now, revoked), self._sealing)
        expect[key] = read.mods.get(key, 0)
        notes.append(AuditNote(actor, action, "Credential", name, reason, {
            "generation": generation, "previousGeneration": old.generation if old else None,
            "previousRevoked": old is not None and len(revoked) > len(old.revoked),
        }))
        return generation

    async def identity(self, name: str, *, actor: str, uri: str) -> tuple[str, IssuedCertificate]:
        """A fresh client-only certificate for `uri` (a proxy's xDS identity or an admin
        user; `name` is its common name) and the CA that signs it (created if missing).
        Not stored; audited. Returns (CA certificate PEM, the certificate and key)."""
        return await self._issue_identity(
            name, actor=actor, details={"uri": uri},
            sign=lambda ca, now: ca.issue_client(name, uri=uri, now=now,
                                                 lifetime_s=self.cert_lifetime_s))

    async def server_identity(self, *, hosts: Sequence[str],
                              actor: str) -> tuple[str, IssuedCertificate]:
        """A fresh serving certificate for the control plane itself (`spiffe://controlplane/
        server`, serverAuth only, naming `hosts` beside loopback) and the CA that signs
        it. Not stored; audited."""
        return await self._issue_identity(
            "controlplane", actor=actor, details={"uri": SERVER_ID, "hosts": list(hosts)},
            sign=lambda ca, now: ca.issue_server(hosts=hosts, now=now,
                                                 lifetime_s=self.cert_lifetime_s))

    async def _issue_identity(
        self, name: str, *, actor: str, details: dict[str, object],
        sign: Callable[[CertificateAuthority, float], IssuedCertificate],
    ) -> tuple[str, IssuedCertificate]:
        for _ in range(5):
            read = await self._read()
            now = self._clock()
            puts: dict[bytes, bytes] = {}
            expect: dict[bytes, int] = {}
            ca = read.ca
            notes: list[AuditNote] = []
            if ca is None:
                ca = CertificateAuthority.create(now=now)
                puts[self._keys.secret_ca] = encode_ca(ca.cert_pem, ca.key_pem, self._sealing)
                expect[self._keys.secret_ca] = 0
                notes.append(AuditNote(SYSTEM_ACTOR, "ca/create", "CertificateAuthority", "ca"))
            issued = sign(ca, now)
            notes.append(AuditNote(actor, "cert/issue-identity", "Certificate", name, "",
                                   {"serial": issued.serial, "notAfter": issued.not_after,
                                    **details}))
            if await self._commit(puts, expect, [], notes):
                return ca.cert_pem, issued
        raise ConflictError("the CA kept changing while issuing; try again")

    async def rotate_certs(
        self, state: DesiredState, *, groups: Sequence[str] = (), actor: str
    ) -> dict[str, tuple[str, str]]:
        """Issue new certificates now; returns group → (old serial, new serial).

        Errors:
            NotFoundError: a named group has no TLS listener (or no group has one).
            ConflictError: other writers kept winning.
        """
        known = tls_groups(state)
        wanted = list(groups) or known
        unknown = sorted(set(wanted) - set(known))
        if unknown or not wanted:
            raise NotFoundError(
                f"no TLS listener or mTLS upstream in group(s) {unknown or '(any)'}; "
                f"groups with certificates: {known or 'none'}")
        for _ in range(CAS_ATTEMPTS):
            read = await self._read()
            now = self._clock()
            puts: dict[bytes, bytes] = {}
            expect: dict[bytes, int] = {}
            notes: list[AuditNote] = []
            ca = read.ca
            if ca is None:
                ca = CertificateAuthority.create(now=now)
                puts[self._keys.secret_ca] = encode_ca(ca.cert_pem, ca.key_pem, self._sealing)
                expect[self._keys.secret_ca] = 0
                notes.append(AuditNote(actor, "ca/create", "CertificateAuthority", "ca"))
            done: dict[str, tuple[str, str]] = {}
            for group in wanted:
                old = read.certs.get(group)
                record = self._put_cert(read, ca, group, now, puts, expect, notes,
                                        actor=actor, action="cert/rotate",
                                        reason="operator request")
                done[group] = (old.cert.serial if old else "", record.cert.serial)
            if await self._commit(puts, expect, [], notes):
                return done
        raise ConflictError("certificates kept changing; rotate again")

    async def rotate_ca(self, state: DesiredState, *, actor: str) -> CaRotation:
        """Start a CA rotation: a new CA, trusted beside the current one but not issuing
        yet (`ca/rotate`). Once every connected proxy has ACKed that two-CA bundle,
        `promote_next_ca` makes it issue every group certificate; once they have ACKed
        those, `retire_previous_ca` drops the old CA. So no proxy ever presents a
        certificate that a peer does not trust yet.

        Errors:
            ConflictError: a previous rotation is not finished, or other writers kept
                winning.
        """
        del state  # the groups are re-issued at promotion, from the state then
        for _ in range(CAS_ATTEMPTS):
            read = await self._read()
            if read.previous_ca is not None or read.next_ca is not None:
                raise ConflictError(
                    "a CA rotation is in progress (both CAs stay trusted until every "
                    "connected proxy has ACKed each step); rotate again after `ca/retire` "
                    "is in the audit log")
            now = self._clock()
            ca = CertificateAuthority.create(now=now)
            previous = read.ca.serial if read.ca is not None else ""
            notes = [AuditNote(
                actor, "ca/rotate", "CertificateAuthority", "ca",
                "operator request; the new CA is trusted beside the current one and starts "
                "issuing once every connected proxy has ACKed both",
                {"serial": ca.serial, "previousSerial": previous or None})]
            puts = {self._next_ca_key: encode_ca(ca.cert_pem, ca.key_pem, self._sealing)}
            if await self._commit(puts, {self._next_ca_key: 0}, [], notes):
                return CaRotation(previous, ca.serial, {})
        raise ConflictError("the CA kept changing; rotate again")

    async def promote_next_ca(self, state: DesiredState, serial: str, *, actor: str,
                              reason: str) -> bool:
        """The rotation's second step: CA `serial` (trusted by now) becomes the issuer
        and re-issues every group certificate; the old CA stays trusted as the previous
        one. Audited (`ca/promote`, `cert/rotate` per group). Returns whether this call
        did it (False: done already, by another replica perhaps)."""
        for _ in range(CAS_ATTEMPTS):
            read = await self._read()
            if read.next_ca is None or read.next_ca.serial != serial:
                return False
            now = self._clock()
            ca = read.next_ca
            puts = {self._keys.secret_ca: encode_ca(ca.cert_pem, ca.key_pem, self._sealing)}
            expect = {self._keys.secret_ca: read.mods.get(self._keys.secret_ca, 0),
                      self._next_ca_key: read.mods[self._next_ca_key]}
            if read.ca is not None:
                puts[self._previous_ca_key] = encode_previous_ca(
                    PreviousCa(read.ca.cert_pem, read.ca.serial, now))
                expect[self._previous_ca_key] = 0
            notes = [AuditNote(actor, "ca/promote", "CertificateAuthority", "ca", reason, {
                "serial": serial, "previousSerial": read.ca.serial if read.ca else None})]
            for group in tls_groups(state):
                self._put_cert(read, ca, group, now, puts, expect, notes, actor=actor,
                               action="cert/rotate", reason="CA rotation")
            if await self._commit(puts, expect, [self._next_ca_key], notes):
                return True
        raise ConflictError("the CA kept changing while promoting the new one")

    async def retire_previous_ca(self, serial: str, *, actor: str, reason: str) -> bool:
        """Drop CA `serial` from the trust bundles if it is still the previous CA; audited
        (`ca/retire`). Returns whether this call retired it (False: already done, by
        another replica perhaps)."""
        read = await self._read()
        if read.previous_ca is None or read.previous_ca.serial != serial:
            return False
        note = AuditNote(actor, "ca/retire", "CertificateAuthority", "ca", reason, {
            "serial": serial, "currentSerial": read.ca.serial if read.ca else None})
        return await self._commit({}, {self._previous_ca_key: read.mods[self._previous_ca_key]},
                                  [self._previous_ca_key], [note])

    async def rotate_credential(
        self, state: DesiredState, name: str, *, value: SecretStr | None, emergency: bool,
        actor: str,
    ) -> CredentialRotation:
        """Switch Credential `name` to `value` (or re-read its source): a new generation.
        With `emergency`, the generation it replaces is revoked: its value is refused
        from then on. A rotation that would not change the value writes nothing.

        Errors:
            NotFoundError: no such Credential.
            InvalidInputError: its file cannot be read; the value is the one already
                sent (nothing to rotate, nothing revoked); the value was revoked before.
            ConflictError: other writers kept winning.
        """
        credential = state.credentials.get(name)
        if credential is None:
            raise NotFoundError(f"Credential/{name} not found; `controlplane get credentials` "
                                "lists what exists")
        if value is not None and (why := credential_value_problem(value.get_secret_value())):
            raise InvalidInputError([FieldError("--from-file", f"the value {why}")])
        new_value = value if value is not None else self.files.read(credential)
        for _ in range(CAS_ATTEMPTS):
            read = await self._read()
            old = read.credentials.get(name)
            if old is not None:
                check_new_value(credential, old, new_value, given=value is not None,
                                 emergency=emergency)
            puts: dict[bytes, bytes] = {}
            expect: dict[bytes, int] = {}
            notes: list[AuditNote] = []
            # Only a value that was sent and is now replaced can be revoked.
            revoked = old if emergency else None
            generation = self._put_credential(
                read, name, new_value, source_digest(credential, self._sealing), self._clock(),
                puts, expect, notes, actor=actor,
                action="credential/revoke" if revoked else "credential/rotate",
                reason=(f"emergency: generation {revoked.generation} revoked" if revoked
                        else "operator request"),
                revoked=(*revoked.revoked, revoked.value) if revoked else None,
            )
            if await self._commit(puts, expect, [], notes):
                return CredentialRotation(name, generation, old.generation if old else 0,
                                          revoked is not None)
        raise ConflictError(f"Credential/{name} kept changing; rotate again")
