"""The vault on a real etcd: issue, rotate when due, race between replicas, audit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import SecretStr

from controlplane.errors import ConflictError, InvalidInputError
from controlplane.model import DesiredState, parse_yaml
from controlplane.secrets import Material, SealingKey, Vault
from controlplane.secrets.files import CredentialFiles
from controlplane.secrets.sync import SecretSync
from controlplane.secrets.vault import AuditNote
from controlplane.store import AuditRecord, EmbeddedEtcd, Store
from tests.support.wait import wait_for

STATE = """
apiVersion: controlplane/v1
kind: Listener
metadata: {name: https}
spec: {group: edge, port: 10443, tls: {certificate: auto}}
---
apiVersion: controlplane/v1
kind: Credential
metadata: {name: key}
spec: {header: x-api-key, value: "inline-value"}
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    etcd = await EmbeddedEtcd.start(tmp_path / "data")
    s = await Store.connect([etcd.endpoint], tls=etcd.tls)
    try:
        yield s
    finally:
        await s.close()
        await etcd.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_vault(store: Store, sealing: SealingKey, clock: Clock,
               files: CredentialFiles | None = None) -> Vault:
    async def commit(puts: Mapping[bytes, bytes], expect: Mapping[bytes, int],
                     deletes: Sequence[bytes], notes: Sequence[AuditNote]) -> bool:
        records = [AuditRecord(actor=n.actor, action=n.action, kind=n.kind, name=n.name,
                               reason=n.reason, after=n.after) for n in notes]
        return await store.commit(puts=puts, expect=expect, deletes=deletes,
                                  audit=records) is not None
    return Vault(store.kv, store.keys, sealing, commit, cert_lifetime_s=3600, clock=clock,
                 files=files)


async def test_issue_rotate_race_and_audit(store: Store) -> None:
    sealing, clock = SealingKey(SealingKey.generate()), Clock()
    state = DesiredState.of(parse_yaml(STATE))
    a, b = make_vault(store, sealing, clock), make_vault(store, sealing, clock)

    done = await asyncio.gather(a.ensure(state), b.ensure(state))
    assert sorted(map(bool, done)) == [False, True], "exactly one replica writes"
    material, _ = await a.load()
    serial = material.certificates["edge"].serial
    assert material.credentials["key"].get_secret_value() == "inline-value"
    assert await a.ensure(state) == []  # nothing due

    clock.now += 3600 * 0.56  # past half the lifetime (+ jitter)
    assert await b.ensure(state) == ["cert/rotate edge"]
    material, _ = await a.load()
    assert material.certificates["edge"].serial != serial

    done = await a.rotate_credential(state, "key", value=SecretStr("new-value"),
                                     emergency=True, actor="token:ops")
    assert (done.generation, done.previous_generation, done.revoked) == (2, 1, True)
    material, _ = await b.load()
    assert material.credentials["key"].get_secret_value() == "new-value"
    assert await a.ensure(state) == []  # a rotated value survives: same source

    entries = await store.audit()
    actions = [e.action for e in entries]
    assert actions.count("ca/create") == 1 and "cert/rotate" in actions
    assert entries[-1].action == "credential/revoke" and entries[-1].actor == "token:ops"
    raw = b"".join(kv.value for kv in (await store.kv.range(store.keys.secrets)).kvs)
    raw += b"".join(kv.value for kv in (await store.kv.range(store.keys.audit)).kvs)
    assert b"new-value" not in raw and b"inline-value" not in raw and b"PRIVATE" not in raw


async def test_a_replica_with_another_key_never_overwrites(store: Store) -> None:
    clock = Clock()
    state = DesiredState.of(parse_yaml(STATE))
    await make_vault(store, SealingKey(SealingKey.generate()), clock).ensure(state)
    before = (await store.kv.range(store.keys.secrets)).kvs
    clock.now += 3600
    other = make_vault(store, SealingKey(SealingKey.generate()), clock)
    assert await other.ensure(state) == []
    assert (await store.kv.range(store.keys.secrets)).kvs == before


async def test_ca_rotation_trusts_both_cas_until_the_fleet_acked(store: Store) -> None:
    clock = Clock()
    vault = make_vault(store, SealingKey(SealingKey.generate()), clock)
    state = DesiredState.of(parse_yaml(STATE))
    await vault.ensure(state)
    before, _ = await vault.load()
    (old_ca,) = before.ca_serials

    # Step 1: the new CA is trusted beside the old one; the old one still issues.
    rotation = await vault.rotate_ca(state, actor="token:ops")
    assert rotation.previous_serial == old_ca and rotation.serial != old_ca
    trusting, _ = await vault.load()
    assert trusting.ca_serials == (old_ca, rotation.serial) and trusting.ca_next
    bundle = x509.load_pem_x509_certificates(trusting.ca_pem.encode())
    assert [f"{c.serial_number:x}" for c in bundle] == [old_ca, rotation.serial]
    assert trusting.certificates["edge"].serial == before.certificates["edge"].serial
    with pytest.raises(ConflictError, match="in progress"):
        await vault.rotate_ca(state, actor="token:ops")

    # Each further step waits until the fleet says every proxy ACKed the last one.
    fleet_ready = asyncio.Event()
    asked: list[tuple[str, ...]] = []

    async def fleet_acked(_state: DesiredState, material: Material) -> bool:
        asked.append(material.ca_serials)
        return fleet_ready.is_set()

    published: list[Material] = []
    sync = SecretSync(vault, published.append, fleet_acked=fleet_acked, retire_poll_s=0.01)
    await sync.prime(state)
    task = asyncio.create_task(sync.run())
    try:
        await wait_for(lambda: len(asked) >= 3, message="the sync asks the fleet")
        assert published[-1].ca_serials == (old_ca, rotation.serial)  # nothing moved
        fleet_ready.set()
        await wait_for(lambda: published[-1].ca_serials == (rotation.serial,),
                       message="promoted, then the previous CA leaves the trust bundle")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert any(m.ca_serials == (rotation.serial, old_ca) and not m.ca_next
               for m in published), "step 2: the new CA issued, both still trusted"
    final = published[-1]
    new_ca = x509.load_pem_x509_certificates(final.ca_pem.encode())[0]
    assert new_ca.serial_number == int(rotation.serial, 16)
    leaf = x509.load_pem_x509_certificate(final.certificates["edge"].cert_pem.encode())
    leaf.verify_directly_issued_by(new_ca)  # new leaves come from the new CA

    actions = [e.action for e in await store.audit()]
    assert actions.index("ca/rotate") < actions.index("ca/promote") < actions.index("ca/retire")
    assert actions[actions.index("ca/promote") + 1] == "cert/rotate"
    assert actions.count("ca/retire") == 1 and actions.count("ca/promote") == 1
    retire = next(e for e in await store.audit() if e.action == "ca/retire")
    assert retire.after is not None and retire.after["serial"] == old_ca


FILE_CREDENTIAL = """
apiVersion: controlplane/v1
kind: Credential
metadata: {{name: from-file}}
spec: {{header: x-api-key, valueFrom: {{file: "{path}"}}}}
"""


async def test_a_rotation_that_changes_nothing_is_refused_and_writes_nothing(
    store: Store, tmp_path: Path,
) -> None:
    secret = tmp_path / "key"
    secret.write_text("file-value-1\n")
    state = DesiredState.of(parse_yaml(STATE + "---" + FILE_CREDENTIAL.format(path=secret)))
    vault = make_vault(store, SealingKey(SealingKey.generate()), Clock(),
                       CredentialFiles.of([tmp_path]))
    await vault.ensure(state)
    before = (await store.kv.range(store.keys.prefix.encode())).revision

    cases = [
        ("key", None, False, "Credential/key: spec.value", "--from-file FILE"),
        ("key", None, True, "Credential/key: spec.value", "Nothing was revoked"),
        ("key", SecretStr("inline-value"), False, "--from-file", "put the new value in it"),
        ("from-file", None, True, "Credential/from-file: spec.valueFrom.file",
         f"{secret} still holds the value generation 1 sends"),
    ]
    for name, value, emergency, where, why in cases:
        with pytest.raises(InvalidInputError) as caught:
            await vault.rotate_credential(state, name, value=value, emergency=emergency,
                                          actor="token:ops")
        (error,) = caught.value.errors
        assert error.location.startswith(where) and why in error.reason, error
    assert (await store.kv.range(store.keys.prefix.encode())).revision == before, "nothing written"

    secret.write_text("file-value-2\n")  # the operator writes the new value first
    done = await vault.rotate_credential(state, "from-file", value=None, emergency=False,
                                         actor="token:ops")
    assert (done.generation, done.previous_generation, done.revoked) == (2, 1, False)


async def test_an_emergency_rotation_revokes_the_value_it_replaced_for_good(
    store: Store,
) -> None:
    state = DesiredState.of(parse_yaml(STATE))
    vault = make_vault(store, SealingKey(SealingKey.generate()), Clock())
    await vault.ensure(state)
    done = await vault.rotate_credential(state, "key", value=SecretStr("second"),
                                         emergency=True, actor="token:ops")
    assert (done.generation, done.previous_generation, done.revoked) == (2, 1, True)
    with pytest.raises(InvalidInputError, match="revoked by an emergency rotation"):
        await vault.rotate_credential(state, "key", value=SecretStr("inline-value"),
                                      emergency=False, actor="token:ops")
    material, _ = await vault.load()
    assert material.credentials["key"].get_secret_value() == "second"
    entries = await store.audit()
    assert entries[-1].action == "credential/revoke"
    assert entries[-1].reason == "emergency: generation 1 revoked"
    assert entries[-1].after == {"generation": 2, "previousGeneration": 1,
                                 "previousRevoked": True}


async def test_a_credential_value_http_cannot_send_is_never_loaded_or_rotated_to(
    store: Store, tmp_path: Path,
) -> None:
    """A CR, LF or NUL inside a credential value reached Envoy's credential injector and
    broke every request (503): not from a file, not from a rotation."""
    secret = tmp_path / "key"
    secret.write_text("v1\r\nX-Evil: 1\n")
    state = DesiredState.of(parse_yaml(STATE + "---" + FILE_CREDENTIAL.format(path=secret)))
    vault = make_vault(store, SealingKey(SealingKey.generate()), Clock(),
                       CredentialFiles.of([tmp_path]))
    await vault.ensure(state)
    material, _ = await vault.load()
    assert "from-file" not in material.credentials and "key" in material.credentials
    before = (await store.kv.range(store.keys.prefix.encode())).revision

    with pytest.raises(InvalidInputError, match="control character") as caught:
        await vault.rotate_credential(state, "key", value=SecretStr("new\nX-Evil: 1"),
                                      emergency=False, actor="token:ops")
    assert caught.value.errors[0].location == "--from-file"
    assert "X-Evil" not in str(caught.value)  # the value is never echoed
    with pytest.raises(InvalidInputError, match=f"{secret}: its value holds the control"):
        await vault.rotate_credential(state, "from-file", value=None, emergency=False,
                                      actor="token:ops")
    assert (await store.kv.range(store.keys.prefix.encode())).revision == before, "nothing written"
