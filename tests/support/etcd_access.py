"""Reach a real etcd the way its owner can: the embedded one only takes a client
certificate from its own CA (under the data dir), so tests that read or write etcd behind
the API's back (as a local attacker who got hold of that key would) use these."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from controlplane.store.etcd_pki import client_tls
from controlplane.store.kv import EtcdKV, EtcdTLS

ETCDCTL = Path(sys.executable).parent / "etcdctl"


def etcdctl(endpoint: str, tls: EtcdTLS | None, *args: str) -> list[str]:
    """An `etcdctl` command line for `endpoint`, with the client pair when given."""
    flags = [f"--endpoints={endpoint}"]
    if tls is not None:
        flags += [f"--cacert={tls.ca}", f"--cert={tls.cert}", f"--key={tls.key}"]
    return [str(ETCDCTL), *flags, *args]


def serve_endpoint(data_dir: Path) -> str:
    """The client URL of the embedded etcd of the serve on `data_dir`."""
    port = json.loads((data_dir / "etcd-ports.json").read_text())["client"]
    return f"https://127.0.0.1:{port}"


def serve_kv(data_dir: Path) -> EtcdKV:
    """A connection to the embedded etcd of the serve on `data_dir`, with its client pair."""
    return EtcdKV([serve_endpoint(data_dir)], tls=client_tls(data_dir))
