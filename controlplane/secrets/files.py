"""Which files the server may read a Credential's value from (`valueFrom: {file: ...}`).

Only files inside a directory given to `serve --credentials-dir` (none by default: then
every `valueFrom.file` is refused), and never inside the data dir or the TLS dir, which
hold the sealing key, etcd's files and the server's own private keys: a Credential
naming one of those would have the server deliver it to a proxy over SDS. Paths are
resolved (symlinks, `..`) before they are checked, and again each time a file is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from controlplane.errors import FieldError, InvalidInputError
from controlplane.model import Credential, Resource
from controlplane.model.envoy_rules import credential_value_problem


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


@dataclass(frozen=True)
class CredentialFiles:
    """The directories credential files may come from, and those they never may.

    Build with `of()`, which resolves every directory; `CredentialFiles()` allows none.
    """

    allowed: tuple[Path, ...] = ()
    forbidden: tuple[tuple[str, Path], ...] = ()
    """(what it is, e.g. "the data dir", its resolved path)."""

    @classmethod
    def of(cls, allowed: Iterable[Path | str], *,
           forbidden: Iterable[tuple[str, Path | str]] = ()) -> CredentialFiles:
        return cls(tuple(_real(d) for d in allowed),
                   tuple((what, _real(d)) for what, d in forbidden))

    def refusal(self, path: str) -> str | None:
        """Why the server may not read `path` (None: it may)."""
        if not self.allowed:
            return ("this server reads no credential files: start `controlplane serve` "
                    "with --credentials-dir DIR and put the file there, or give the value "
                    "inline (spec.value)")
        real = _real(path)
        shown = path if str(real) == path else f"{path} (resolved: {real})"
        for what, directory in self.forbidden:
            if _inside(real, directory) or _inside(directory, real):
                return (f"{shown} is inside {what} {directory}, which holds the server's "
                        "own keys or environment and is never read for a credential; move "
                        "the value to a file in --credentials-dir")
        if not any(_inside(real, directory) for directory in self.allowed):
            return (f"{shown} is not inside a --credentials-dir "
                    f"({', '.join(str(d) for d in self.allowed)}); move it there")
        return None

    def check(self, resources: Sequence[Resource]) -> None:
        """Errors:
        InvalidInputError: a Credential names a file the server may not read (each
            one listed).
        """
        errors = []
        for resource in resources:
            if not isinstance(resource, Credential) or resource.spec.value_from is None:
                continue
            why = self.refusal(resource.spec.value_from.file)
            if why is not None:
                errors.append(FieldError(f"Credential/{resource.name}: spec.valueFrom.file",
                                         why))
        if errors:
            raise InvalidInputError(errors)

    def read(self, credential: Credential) -> SecretStr:
        """The value `credential` names: inline, or read from its file (trailing newline
        stripped).

        Errors:
            InvalidInputError: the file may not be read, cannot be read, or is empty.
        """
        spec = credential.spec
        if spec.value is not None:
            return spec.value
        assert spec.value_from is not None  # the model requires exactly one
        path = spec.value_from.file
        why = self.refusal(path)
        if why is not None:
            raise InvalidInputError([FieldError(
                f"Credential/{credential.name}: spec.valueFrom.file", why)])
        try:
            # The resolved path, as checked: a symlink swapped in since is not followed.
            fd = os.open(_real(path), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as f:
                value = f.read().rstrip("\r\n")
        except OSError as exc:
            raise InvalidInputError(
                f"cannot read credential file {path}: {exc.strerror}") from None
        if not value:
            raise InvalidInputError(f"credential file {path} is empty")
        why = credential_value_problem(value)
        if why:
            raise InvalidInputError(f"credential file {path}: its value {why}")
        return SecretStr(value)
