"""`controlplane rollout status|pause|resume|promote|abort|rollback NAME`."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    """Register `rollout` on `sub`."""
