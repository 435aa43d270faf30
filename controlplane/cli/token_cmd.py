"""Placeholder: filled in by the audit/token work."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    """Register this command on `sub`; `client` carries --server/--token/--tls-dir."""
