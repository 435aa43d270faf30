"""ARCHITECTURE.md cannot drift from the tree: every path it names exists, and every
layer of the import-linter contract in pyproject.toml is named in its layer table."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "ARCHITECTURE.md"
_TOP = ("controlplane/", "tests/", "docs/", "deploy/", "examples/", "protos/", "benchmarks/",
        ".ci/")
_SPAN = re.compile(r"`([^`\s]+)`|\]\(([^)\s#]+)\)")


def named_paths(text: str) -> list[str]:
    """Code spans and link targets that are repository paths (a top-level folder, or a
    file with an extension at the root such as `pyproject.toml`)."""
    out = []
    for span, link in _SPAN.findall(text):
        path = (span or link).rstrip(".,")
        if path.startswith(_TOP) or re.fullmatch(r"[\w.-]+\.(md|toml|yaml|py)", path):
            out.append(path)
    return out


def test_every_path_in_architecture_md_exists() -> None:
    paths = named_paths(DOC.read_text())
    assert len(paths) > 20, "the paths parser found too few paths: check named_paths"
    missing = sorted({p for p in paths if not (ROOT / p).exists()})
    assert not missing, f"ARCHITECTURE.md names paths that do not exist: {missing}"


def test_every_import_layer_is_named() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    modules = {m.strip() for layer in layers for m in layer.split("|")}
    text = DOC.read_text()
    unnamed = sorted(m for m in modules if f"`{m}`" not in text)
    assert not unnamed, f"layers in pyproject.toml that ARCHITECTURE.md does not name: {unnamed}"
