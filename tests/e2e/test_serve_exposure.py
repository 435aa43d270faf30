"""`serve` in plaintext off loopback warns of what that exposes, and says where it really
listens (the port it bound when 0 was asked, the host it was given). Real serve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controlplane.wiring import bound_address, is_loopback
from tests.support.controlplane import ServeProcess
from tests.support.wait import wait_for_sync

pytestmark = pytest.mark.e2e

RISK = "anyone who reaches this port can claim any node and group"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("", False), ("10.1.2.3", False),
     ("proxy.example.com", False)],
)
def test_only_loopbackis_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_address_shown_is_the_one_bound() -> None:
    assert bound_address("0.0.0.0:0", 41234) == "0.0.0.0:41234"
    assert bound_address("[::1]:0", 41234) == "[::1]:41234"
    assert bound_address(":0", 41234) == "[::]:41234"


def test_plaintext_off_loopback_warns_and_shows_the_port_it_bound(tmp_path: Path) -> None:
    quiet = ServeProcess(tmp_path / "loopback").start()
    try:
        ready = wait_for_sync(lambda: re.search(r"serving xDS on (\S+)", quiet.log()),
                              timeout=10, message="the ready line")
        assert ready.group(1) == quiet.xds
        assert RISK not in quiet.log()
    finally:
        quiet.stop()

    exposed = ServeProcess(tmp_path / "exposed", extra_args=("--xds-addr", "0.0.0.0:0"))
    exposed.start()
    try:
        ready = wait_for_sync(lambda: re.search(r"serving xDS on 0\.0\.0\.0:(\d+)",
                                                exposed.log()),
                              timeout=10, message="the ready line with the bound port")
        assert int(ready.group(1)) != 0
        log = exposed.log()
        warning = next(line for line in log.splitlines() if RISK in line)
        assert "WARNING" in warning and f"0.0.0.0:{ready.group(1)}" in warning
        for words in ("read that group's config and secrets", "steer rollouts",
                      "--tls-dir"):
            assert words in warning, warning
    finally:
        exposed.stop()
