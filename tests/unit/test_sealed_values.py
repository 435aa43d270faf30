"""Inline Credential values sealed for etcd, keyed fingerprints, and the files the server
may read a credential from: pure functions, no etcd."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from controlplane.errors import ControlPlaneError, InvalidInputError
from controlplane.model import Credential, parse_yaml, to_stored
from controlplane.secrets import SealingKey
from controlplane.secrets.files import CredentialFiles
from controlplane.secrets.records import legacy_source_digest, source_digest
from controlplane.store.sealed import SEALED, is_clear, open_stored, seal_stored
from controlplane.xds.resources import CLUSTER, SECRET
from controlplane.xds.snapshot import Snapshot

VALUE = "hunter2-inline"


def credential(value: str = VALUE) -> Credential:
    (resource,) = parse_yaml(f"apiVersion: controlplane/v1\nkind: Credential\n"
                             f"metadata: {{name: key}}\nspec: {{header: x-api-key, "
                             f"value: {value}}}\n")
    assert isinstance(resource, Credential)
    return resource


def file_credential(path: Path | str) -> Credential:
    (resource,) = parse_yaml(f"apiVersion: controlplane/v1\nkind: Credential\n"
                             f"metadata: {{name: from-file}}\nspec: {{header: x-api-key, "
                             f"valueFrom: {{file: \"{path}\"}}}}\n")
    assert isinstance(resource, Credential)
    return resource


KEY = SealingKey(SealingKey.generate())


def test_a_sealed_value_is_not_in_the_stored_bytes_and_opens_to_the_original() -> None:
    clear = to_stored(credential())
    assert is_clear(clear)
    sealed = seal_stored(clear, KEY)
    assert VALUE.encode() not in sealed and not is_clear(sealed)
    assert json.loads(sealed)["spec"][SEALED].startswith("gAAAA")
    assert open_stored(sealed, KEY) == clear


def test_resealing_the_same_value_keeps_the_stored_bytes_so_a_reapply_is_unchanged() -> None:
    first = seal_stored(to_stored(credential()), KEY)
    assert seal_stored(to_stored(credential()), KEY, previous=first) == first
    changed = seal_stored(to_stored(credential("another")), KEY, previous=first)
    assert changed != first and open_stored(changed, KEY) == to_stored(credential("another"))
    other_key = SealingKey(SealingKey.generate())  # a seal we cannot open: sealed afresh
    assert open_stored(seal_stored(to_stored(credential()), other_key, previous=first),
                       other_key) == to_stored(credential())


def test_other_resources_and_file_credentials_pass_through() -> None:
    raw = to_stored(file_credential("/run/secrets/key"))
    assert seal_stored(raw, None) == raw and open_stored(raw, None) == raw


def test_without_a_sealer_an_inline_value_is_refused_not_stored_in_clear() -> None:
    with pytest.raises(ControlPlaneError, match="no sealing key"):
        seal_stored(to_stored(credential()), None)
    with pytest.raises(ControlPlaneError, match="no sealing key"):
        open_stored(seal_stored(to_stored(credential()), KEY), None)


def test_a_fingerprint_is_a_keyed_hmac_not_an_unsalted_hash() -> None:
    other = SealingKey(SealingKey.generate())
    assert KEY.fingerprint(b"x") == KEY.fingerprint(b"x") != KEY.fingerprint(b"y")
    assert KEY.fingerprint(b"x") != other.fingerprint(b"x")
    assert hashlib.sha256(b"x").hexdigest() != KEY.fingerprint(b"x")


def test_a_credentials_source_digest_cannot_be_checked_against_a_guess() -> None:
    digest = source_digest(credential(), KEY)
    assert digest == source_digest(credential(), KEY) != source_digest(credential("b"), KEY)
    guessed = hashlib.sha256(f"value:{VALUE}".encode()).hexdigest()
    assert guessed[:16] == legacy_source_digest(credential())  # what records used to hold
    assert guessed[:16] not in digest and guessed[:32] not in digest
    assert source_digest(credential(), SealingKey(SealingKey.generate())) != digest


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    allowed, data, tls = tmp_path / "creds", tmp_path / "creds" / "data", tmp_path / "tls"
    for d in (allowed, data, tls):
        d.mkdir(parents=True)
    (allowed / "key").write_text("file-value\n")
    (data / "secrets.key").write_text("sealing-key\n")
    (tls / "server.key").write_text("tls-key\n")
    (allowed / "link").symlink_to(data / "secrets.key")
    (allowed / "tls-link").symlink_to(tls / "server.key")
    return allowed, data, tls


def policy(dirs: tuple[Path, Path, Path]) -> CredentialFiles:
    allowed, data, tls = dirs
    return CredentialFiles.of([allowed], forbidden=[("the data dir", data),
                                                    ("the TLS dir", tls)])


def test_a_file_in_a_credentials_dir_is_read(dirs: tuple[Path, Path, Path]) -> None:
    value = policy(dirs).read(file_credential(dirs[0] / "key"))
    assert value.get_secret_value() == "file-value"


@pytest.mark.parametrize(("name", "reason"), [
    pytest.param("data/secrets.key", "inside the data dir", id="the-data-dirs-sealing-key"),
    pytest.param("link", "inside the data dir", id="a-symlink-to-the-sealing-key"),
    pytest.param("tls-link", "inside the TLS dir", id="a-symlink-into-the-tls-dir"),
    pytest.param("../tls/server.key", "inside the TLS dir", id="dot-dot-into-the-tls-dir"),
    pytest.param("../elsewhere", "is not inside a --credentials-dir", id="outside"),
])
def test_a_file_the_server_must_not_read_is_refused_naming_the_field(
    dirs: tuple[Path, Path, Path], name: str, reason: str,
) -> None:
    resource = file_credential(f"{dirs[0]}/{name}")
    for attempt in (lambda: policy(dirs).check([resource]),
                    lambda: policy(dirs).read(resource)):
        with pytest.raises(InvalidInputError) as caught:
            attempt()
        (error,) = caught.value.errors
        assert error.location == "Credential/from-file: spec.valueFrom.file"
        assert reason in error.reason


def test_without_credentials_dirs_every_file_is_refused(dirs: tuple[Path, Path, Path]) -> None:
    with pytest.raises(InvalidInputError, match=r"reads no credential files.*--credentials-dir"):
        CredentialFiles().check([file_credential(dirs[0] / "key")])
    CredentialFiles().check([credential()])  # inline values need no file


def test_sds_versions_are_keyed_so_a_reported_version_reveals_no_value() -> None:
    secret = secret_pb2.Secret(name="credential-key", generic_secret=secret_pb2.GenericSecret(
        secret=base_pb2.DataSource(inline_string=VALUE)))
    cluster = cluster_pb2.Cluster(name="payments|v1")
    resources = {SECRET: [secret], CLUSTER: [cluster]}
    plain = Snapshot.build(resources)
    keyed = Snapshot.build(resources, secret_key=KEY.derive(b"sds-versions"))
    guessed = hashlib.sha256(secret.SerializeToString(deterministic=True)).hexdigest()[:16]
    assert plain.resources(SECRET)["credential-key"].version == guessed  # unkeyed: testable
    assert keyed.resources(SECRET)["credential-key"].version != guessed
    assert keyed.version(SECRET) != plain.version(SECRET)
    again = Snapshot.build(resources, secret_key=KEY.derive(b"sds-versions"))
    assert again.version(SECRET) == keyed.version(SECRET), "the same on every replica"
    assert keyed.version(CLUSTER) == plain.version(CLUSTER), "other types: content hashes"
