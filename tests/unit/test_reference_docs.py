"""docs/reference.md is what the models say now, describes every field, and its examples
pass the checks `apply` makes before the store (tests/feature/test_reference_examples.py
sends them through the store's own apply)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from controlplane.model import KINDS, DesiredState, parse_yaml
from controlplane.model.reference import problems, render
from controlplane.secrets.files import CredentialFiles

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
_EXAMPLE = re.compile(r"^### Example\n\n```yaml\n(.*?)^```$", re.M | re.S)


def examples() -> list[str]:
    """The example blocks of docs/reference.md, as the file has them."""
    return _EXAMPLE.findall(REFERENCE.read_text())


def test_reference_matches_the_models() -> None:
    wanted, have = render(), REFERENCE.read_text()
    diff = "".join(list(difflib.unified_diff(
        have.splitlines(keepends=True), wanted.splitlines(keepends=True),
        "docs/reference.md", "generated"))[:40])
    assert have == wanted, (
        "docs/reference.md is stale: run `make docs` "
        f"(.venv/bin/python -m controlplane.model.reference)\n{diff}")


def test_every_field_is_described() -> None:
    assert problems() == []


def test_every_kind_has_one_example_and_a_section() -> None:
    text = REFERENCE.read_text()
    assert len(examples()) == len(KINDS)
    for kind in KINDS:
        assert f"\n## {kind}\n" in text
        assert f"kind: {kind}\n" in "".join(examples())


def test_the_examples_are_one_valid_apply() -> None:
    # What the CLI validates (every field), what the server checks of files, and the rules
    # across resources the store checks before it writes.
    resources = parse_yaml("---\n".join(examples()))
    assert {r.kind for r in resources} == set(KINDS)
    CredentialFiles.of(["/run/secrets"]).check(resources)
    DesiredState.of(resources).check()
