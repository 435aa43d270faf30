"""The examples of docs/reference.md go through the store's own apply, on a real etcd:
every one of them is something a user can apply as written."""

from __future__ import annotations

from pathlib import Path

from controlplane.model import KINDS, parse_yaml
from controlplane.secrets import SealingKey
from controlplane.store import EmbeddedEtcd, Store
from tests.unit.test_reference_docs import examples


async def test_the_reference_examples_apply(tmp_path: Path) -> None:
    etcd = await EmbeddedEtcd.start(tmp_path / "data")
    try:
        store = await Store.connect([etcd.endpoint], tls=etcd.tls,
                                    sealer=SealingKey(SealingKey.generate()))
        try:
            resources = parse_yaml("---\n".join(examples()))
            result = await store.apply(resources, actor="test")
            assert {c.action for c in result.changes} == {"created"}
            assert {r.kind for r in result.state_after.resources()} == set(KINDS)
            # Applied again as written (a Rollout's `from` included): nothing changes.
            again = await store.apply(resources, actor="test", dry_run=True)
            assert {c.action for c in again.changes} == {"unchanged"}
        finally:
            await store.close()
    finally:
        await etcd.stop()
