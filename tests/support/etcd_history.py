"""Search everything a real etcd holds for some bytes: every key at every revision still
in its history (with the real `etcdctl`), and the files under its data dir (db, WAL).

Every value ever written is visible at its own revision, so reading the whole keyspace at
each revision from 1 to now sees all of history that etcd has not compacted away.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ETCDCTL = Path(sys.executable).parent / "etcdctl"


@dataclass(frozen=True)
class History:
    """Where `needle` was found (`rev N: KEY`), and the revisions etcd had compacted."""

    found: list[str]
    compacted: list[int]
    revision: int


def _get(endpoint: str, revision: int | None) -> subprocess.CompletedProcess[str]:
    args = [str(ETCDCTL), f"--endpoints={endpoint}", "get", "", "--from-key", "-w", "json"]
    if revision is not None:
        args.append(f"--rev={revision}")
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def search_history(endpoint: str, needle: bytes) -> History:
    """Every (revision, key) whose value contains `needle`, over all revisions kept."""
    now = _get(endpoint, None)
    assert now.returncode == 0, now.stderr
    revision = int(json.loads(now.stdout)["header"]["revision"])
    found: list[str] = []
    compacted: list[int] = []
    for rev in range(1, revision + 1):
        got = _get(endpoint, rev)
        if got.returncode != 0:
            assert "compacted" in got.stderr, got.stderr
            compacted.append(rev)
            continue
        for kv in json.loads(got.stdout).get("kvs", []):
            if needle in base64.b64decode(kv.get("value", "")):
                found.append(f"rev {rev}: {base64.b64decode(kv['key']).decode()}")
    return History(found, compacted, revision)


def search_files(directory: Path, needle: bytes) -> list[Path]:
    """The files under `directory` (etcd's db and WAL among them) that contain `needle`."""
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and not p.is_symlink() and needle in p.read_bytes())
