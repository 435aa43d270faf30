"""An attacker who reads etcd (its keys, any revision still in its history, its db file
and WAL) finds no credential value; one who may apply a Credential cannot make the
server read its own sealing key (or any file outside `--credentials-dir`) and deliver it
over SDS.

Each drives the real `controlplane serve` on a real etcd; the etcd is the test's own, so
its data dir (db and WAL) can be searched byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest

from controlplane.model import parse_yaml, to_stored
from controlplane.store import EmbeddedEtcd, Keys
from controlplane.store.kv import EtcdKV
from tests.support.controlplane import ServeProcess, cli
from tests.support.etcd_history import search_files, search_history

pytestmark = [pytest.mark.reliability]


def inline(name: str, value: str) -> str:
    return (f"apiVersion: controlplane/v1\nkind: Credential\nmetadata: {{name: {name}}}\n"
            f'spec: {{header: x-api-key, value: "{value}"}}\n')


def from_file(name: str, path: Path) -> str:
    return (f"apiVersion: controlplane/v1\nkind: Credential\nmetadata: {{name: {name}}}\n"
            f'spec: {{header: x-api-key, valueFrom: {{file: "{path}"}}}}\n')


def apply(serve: ServeProcess, text: str) -> None:
    result = cli(["apply", "-f", "-"], server=serve.admin, stdin=text)
    assert result.code == 0, result.err


def test_no_credential_value_is_in_any_etcd_key_revision_db_or_wal_file(
    tmp_path: Path, etcd: EmbeddedEtcd,
) -> None:
    first, second, in_file = (f"cred-{secrets.token_hex(12)}" for _ in range(3))
    key_file = tmp_path / "creds" / "key"
    key_file.parent.mkdir()
    key_file.write_text(in_file + "\n")
    serve = ServeProcess(tmp_path / "cp", etcd=etcd,
                         extra_args=("--credentials-dir", str(key_file.parent))).start()
    try:
        apply(serve, inline("inline-key", first) + "---\n" + from_file("file-key", key_file))
        apply(serve, inline("inline-key", second))  # a change: the first value is history
        shown = cli(["get", "credentials", "inline-key", "-o", "yaml"], server=serve.admin)
        assert shown.code == 0 and "[redacted]" in shown.out, shown
        audit = cli(["audit", "-o", "json"], server=serve.admin)
        assert audit.code == 0 and "apply/configured" in audit.out, audit.err
    finally:
        serve.stop()
    values = [v.encode() for v in (first, second, in_file)]
    history = search_history(etcd, values)
    assert history.found == [], f"in etcd's history: {history.found}"
    assert history.compacted_below == 0 and history.revision > 10, "all history searched"
    # etcd's db file and WAL (tmp_path/etcd), serve's own data dir and logs
    leaks = search_files(tmp_path / "etcd", values) + search_files(tmp_path / "cp", values)
    assert leaks == [], leaks


def test_clear_values_an_older_version_stored_are_sealed_at_start_and_compacted_away(
    tmp_path: Path, etcd: EmbeddedEtcd,
) -> None:
    value = f"legacy-{secrets.token_hex(12)}"

    async def write_as_an_older_version() -> None:
        kv = EtcdKV([etcd.endpoint], tls=etcd.tls)
        try:
            (resource,) = parse_yaml(inline("legacy-key", value))
            await kv.put(Keys().resource("Credential", "legacy-key"), to_stored(resource))
        finally:
            await kv.close()

    asyncio.run(write_as_an_older_version())
    assert search_history(etcd, [value.encode()]).found, "in clear, as before"
    serve = ServeProcess(tmp_path / "cp", etcd=etcd).start()
    try:
        history = search_history(etcd, [value.encode()])
        assert history.found == [], f"still in etcd's history: {history.found}"
        assert history.compacted_below > 1, "the revisions before the rewrite were compacted"
        db = next((tmp_path / "etcd").rglob("db"))
        assert value.encode() not in db.read_bytes(), "defragmented out of the db file"
        # The WAL is not searched: etcd keeps its entries until it rotates the files
        # (README, "Sealed at rest").
        entries = json.loads(cli(["audit", "-o", "json"], server=serve.admin).out)
        sealed = [e for e in entries if e["action"] == "store/seal"]
        assert [(e["actor"], e["name"]) for e in sealed] == [("controlplane", "legacy-key")]
        shown = cli(["get", "credentials", "legacy-key", "-o", "json"], server=serve.admin)
        assert shown.code == 0 and value not in shown.out and "[redacted]" in shown.out
    finally:
        serve.stop()


def test_valuefrom_naming_the_sealing_key_is_refused_with_exit_2(tmp_path: Path) -> None:
    # The data dir (and /proc) inside the credentials dirs: refused all the same.
    serve = ServeProcess(tmp_path / "cp",
                         extra_args=("--credentials-dir", f"{tmp_path},/proc")).start()
    try:
        sealing_key = tmp_path / "cp" / "secrets.key"
        assert sealing_key.exists()
        link = tmp_path / "innocent"
        link.symlink_to(sealing_key)
        for path, why in [
            (sealing_key, "inside the data dir"),
            (link, "inside the data dir"),
            (tmp_path / "cp" / ".." / "cp" / "secrets.key", "inside the data dir"),
            (Path("/proc/self/environ"), "inside procfs"),  # CONTROLPLANE_SECRETS_KEY
        ]:
            result = cli(["apply", "-f", "-"], server=serve.admin,
                         stdin=from_file("stolen", path))
            assert result.code == 2, (path, result)
            assert "Credential/stolen: spec.valueFrom.file" in result.err, result.err
            assert why in result.err, result.err
        listed = cli(["get", "credentials", "-o", "json"], server=serve.admin)
        assert listed.code == 0 and "stolen" not in listed.out, "nothing written"
        audit = cli(["audit", "-o", "json"], server=serve.admin)
        assert audit.code == 0 and "stolen" not in audit.out
    finally:
        serve.stop()


def test_without_credentials_dir_valuefrom_file_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("value\n")
    serve = ServeProcess(tmp_path / "cp").start()
    try:
        result = cli(["apply", "-f", "-"], server=serve.admin,
                     stdin=from_file("from-file", key_file))
        assert result.code == 2, result
        assert "Credential/from-file: spec.valueFrom.file" in result.err
        assert "--credentials-dir" in result.err
    finally:
        serve.stop()
