"""Search everything a real etcd holds for some bytes: every value of every key at every
revision still in its history (read with the real `etcdctl`), and the files under its
data dir (db, WAL).

`etcdctl watch --rev R` replays every event from revision R on; what was written before R
(when etcd compacted its history up to R) is what a read at R shows. Together: every
value etcd can still give anyone.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from controlplane.store import EmbeddedEtcd
from tests.support.etcd_access import etcdctl

REPLAY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class History:
    """Where the needles were found (`NEEDLE at rev N: KEY`); `compacted_below`: the
    revisions under it are gone (0: none are); `revision`: the latest one searched."""

    found: list[str]
    compacted_below: int
    revision: int


def _ctl(etcd: EmbeddedEtcd, *args: str) -> list[str]:
    return etcdctl(etcd.endpoint, etcd.tls, *args, "-w", "json")


def _kvs(etcd: EmbeddedEtcd, revision: int | None) -> tuple[int, list[dict[str, object]]]:
    args = ["get", "", "--from-key"] + ([f"--rev={revision}"] if revision else [])
    got = subprocess.run(_ctl(etcd, *args), capture_output=True, text=True, timeout=30,
                         check=True)
    reply = json.loads(got.stdout)
    return int(reply["header"]["revision"]), list(reply.get("kvs", []))


def _replay(etcd: EmbeddedEtcd, start: int, until: int) -> tuple[list[dict[str, object]], int]:
    """Events from `start` through `until`, or ([], the compact revision) if `start` is
    compacted. The watch is stopped by its PID once `until` is reached."""
    with subprocess.Popen(_ctl(etcd, "watch", "--prefix", "", "--rev", str(start)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        watchdog = threading.Timer(REPLAY_TIMEOUT_S, proc.kill)
        watchdog.start()
        try:
            return _read_until(proc, until)
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait(10)


def _read_until(proc: subprocess.Popen[str], until: int) -> tuple[list[dict[str, object]], int]:
    events: list[dict[str, object]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        reply = json.loads(line)
        if reply.get("Canceled"):
            return [], int(reply["CompactRevision"])
        batch = reply.get("Events") or []
        events.extend(e["kv"] for e in batch)
        if batch and int(batch[-1]["kv"]["mod_revision"]) >= until:
            return events, 0
    raise AssertionError(f"etcdctl watch ended before revision {until}")


def _search(kvs: Iterable[dict[str, object]], needles: Sequence[bytes], at: str) -> list[str]:
    found = []
    for kv in kvs:
        value = base64.b64decode(str(kv.get("value", "")))
        for needle in needles:
            if needle in value:
                key = base64.b64decode(str(kv["key"])).decode()
                rev = kv.get("mod_revision", at)
                found.append(f"{needle.decode(errors='replace')} at rev {rev}: {key}")
    return found


def search_history(etcd: EmbeddedEtcd, needles: Sequence[bytes]) -> History:
    """Every value etcd still holds at any revision that contains one of `needles`."""
    revision, _ = _kvs(etcd, None)
    events, compacted = _replay(etcd, 1, revision) if revision > 1 else ([], 0)
    found = _search(events, needles, "?")
    if compacted:
        _, live = _kvs(etcd, compacted)  # what was written before it, as of it
        events, again = _replay(etcd, compacted + 1, revision) if revision > compacted \
            else ([], 0)
        assert not again, "compacted again while searching"
        found = _search(live, needles, str(compacted)) + _search(events, needles, "?")
    return History(found, compacted, revision)


def search_files(directory: Path, needles: Sequence[bytes]) -> list[str]:
    """`NEEDLE in FILE` for every file under `directory` (etcd's db and WAL among them)
    that contains one of `needles`."""
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{n.decode(errors='replace')} in {path}" for n in needles if n in data]
    return found
