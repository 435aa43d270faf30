"""One `controlplane serve` per --data-dir: an flock on `DIR/serve.lock`, held while it runs.

The kernel drops the lock when the holder exits, however it exits, so a stale file
never blocks a start (no pid guessing). The file says who holds it: pid, then the
addresses once they are bound, for the error a second serve prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import IO

from controlplane.errors import FieldError, InvalidInputError

LOCK_FILE = "serve.lock"


def guard_data_dir(data_dir: Path) -> None:
    """Make the data dir private to this user (0700): it holds the sealing key, the audit
    anchor and the embedded etcd's client key. Also an existing one made by hand."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)


class DataDirLock:
    """The exclusive lock on a data directory. `acquire` it, `describe` the holder's
    addresses once bound, `release` at the end."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Errors:
            InvalidInputError: another process holds it (its pid and addresses named).
        """
        guard_data_dir(self.path.parent)
        # Not truncated on open: the holder's record must survive our failed attempt.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        handle = os.fdopen(fd, "a+")  # held open as long as the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read()
            handle.close()
            raise InvalidInputError([FieldError(
                "--data-dir", f"{self.path.parent} is in use by {_describe(holder)}; stop it "
                "first, or give this serve another --data-dir")]) from None
        self._file = handle
        self.describe()

    def describe(self, **addresses: str) -> None:
        """Record the holder (this process) and the addresses it serves on."""
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps({"pid": os.getpid(), **addresses}))
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _describe(raw: str) -> str:
    try:
        holder = json.loads(raw)
    except ValueError:
        return "another controlplane serve (starting: it has not said who it is yet)"
    where = ", ".join(f"{k} {v}" for k, v in holder.items() if k != "pid")
    return (f"controlplane serve pid {holder.get('pid', '?')} "
            f"({where or 'starting: no address bound yet'})")
