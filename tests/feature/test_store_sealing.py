"""Sealed at rest on a real etcd: inline Credential values and the vault's fingerprints,
as a version before sealing left them, rewritten (audited) and their history compacted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from controlplane.model import Credential, DesiredState, parse_yaml, to_stored
from controlplane.secrets import SealingKey, Vault
from controlplane.secrets.files import CredentialFiles
from controlplane.secrets.records import (
    SOURCE_HMAC,
    decode_credential,
    encode_credential,
    legacy_source_digest,
)
from controlplane.secrets.vault import AuditNote
from controlplane.store import AuditRecord, EmbeddedEtcd, Store
from tests.support.etcd_history import search_history

SECRET = "clear-from-an-older-version"
STATE = f"""
apiVersion: controlplane/v1
kind: Credential
metadata: {{name: key}}
spec: {{header: x-api-key, value: "{SECRET}"}}
"""
KEY = SealingKey(SealingKey.generate())


@pytest.fixture
async def store(etcd: EmbeddedEtcd) -> AsyncIterator[Store]:
    s = await Store.connect([etcd.endpoint], tls=etcd.tls, sealer=KEY)
    try:
        yield s
    finally:
        await s.close()


def vault_of(store: Store, files: CredentialFiles | None = None) -> Vault:
    async def commit(puts: Mapping[bytes, bytes], expect: Mapping[bytes, int],
                     deletes: Sequence[bytes], notes: Sequence[AuditNote]) -> bool:
        records = [AuditRecord(actor=n.actor, action=n.action, kind=n.kind, name=n.name,
                               reason=n.reason, after=n.after) for n in notes]
        return await store.commit(puts=puts, expect=expect, deletes=deletes,
                                  audit=records) is not None
    return Vault(store.kv, store.keys, KEY, commit, files=files)


async def test_a_reapply_of_the_same_sealed_value_is_unchanged(store: Store) -> None:
    (first,) = (await store.apply(parse_yaml(STATE), actor="alice")).changes
    (again,) = (await store.apply(parse_yaml(STATE), actor="alice")).changes
    (other,) = (await store.apply(parse_yaml(STATE.replace(SECRET, "new")),
                                  actor="alice")).changes
    assert (first.action, again.action, other.action) == ("created", "unchanged",
                                                          "configured")


async def test_clear_values_are_sealed_audited_and_gone_from_history_after_compaction(
    store: Store, etcd: EmbeddedEtcd,
) -> None:
    key = store.keys.resource("Credential", "key")
    (resource,) = parse_yaml(STATE)
    await store.kv.put(key, to_stored(resource))  # as a version before sealing wrote it
    assert search_history(etcd, [SECRET.encode()]).found

    assert await store.seal_clear_values(actor="controlplane") == ["key"]
    assert await store.seal_clear_values(actor="controlplane") == []  # once
    got = await store.kv.get(key)
    assert got is not None and SECRET.encode() not in got.value
    stored = await store.get("Credential", "key")
    assert isinstance(stored, Credential) and stored.spec.value is not None
    assert stored.spec.value.get_secret_value() == SECRET
    (entry,) = [e for e in await store.audit() if e.kind == "Credential"]
    assert (entry.action, entry.actor, entry.name) == ("store/seal", "controlplane", "key")
    assert SECRET not in json.dumps([e.to_json().decode() for e in await store.audit()])

    before = search_history(etcd, [SECRET.encode()])
    assert before.found, "the clear revision is still in etcd's history"
    revision = await store.compact_history()
    after = search_history(etcd, [SECRET.encode()])
    assert after.found == [], after.found
    assert after.compacted_below == revision, "older revisions are compacted"
    await store.kv.compact(revision - 1)  # another replica compacted past it: no error


async def test_an_unsalted_fingerprint_is_rewritten_keyed_without_a_new_generation(
    store: Store,
) -> None:
    state = DesiredState.of(parse_yaml(STATE))
    vault = vault_of(store)
    assert await vault.ensure(state) == ["credential/load key"]
    record_key = store.keys.secret_credential("key")
    got = await store.kv.get(record_key)
    assert got is not None
    record = decode_credential(got.value, KEY)
    assert record.source.startswith(SOURCE_HMAC)
    legacy = legacy_source_digest(state.credentials["key"])
    await store.kv.put(record_key, encode_credential(replace(record, source=legacy), KEY))

    assert await vault.migrate_sources(state) == ["key"]
    assert await vault.migrate_sources(state) == []
    got = await store.kv.get(record_key)
    assert got is not None and legacy.encode() not in got.value
    migrated = decode_credential(got.value, KEY)
    assert migrated.source.startswith(SOURCE_HMAC)
    assert (migrated.generation, migrated.value) == (record.generation, record.value)
    assert await vault.ensure(state) == [], "the keyed source matches: nothing re-read"
    assert [e.action for e in await store.audit()][-1] == "credential/migrate"


async def test_a_value_read_from_a_file_now_off_limits_is_never_sent_again(
    store: Store, tmp_path: Path,
) -> None:
    # As if applied before --credentials-dir existed, naming the data dir's sealing key.
    data = tmp_path / "data"
    stolen = data / "secrets.key"
    stolen.write_text("the-sealing-key\n")
    state = DesiredState.of(parse_yaml(
        "apiVersion: controlplane/v1\nkind: Credential\nmetadata: {name: stolen}\n"
        f'spec: {{header: x-api-key, valueFrom: {{file: "{stolen}"}}}}\n'))
    assert await vault_of(store, CredentialFiles.of([tmp_path])).ensure(state) == [
        "credential/load stolen"]
    guarded = vault_of(store, CredentialFiles.of([tmp_path],
                                                 forbidden=[("the data dir", data)]))
    done = await guarded.ensure(state)
    assert done[0] == "credential/refuse stolen", done
    material, _ = await guarded.load()
    assert "stolen" not in material.credentials
    assert await guarded.ensure(state) == [], "refused once; nothing to delete after"
    (entry,) = [e for e in await store.audit() if e.action == "credential/refuse"]
    assert entry.reason.startswith("spec.valueFrom.file: ") and "inside the data dir" in (
        entry.reason)
