"""`controlplane demo --fast` end to end, as CI runs it: a subprocess that must finish by
itself, exit 0, leave nothing running, and whose audit log shows the three outcomes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

FAST_DEMO_S = 90.0  # ~30 s on an idle 2-core machine; the budget of --fast is 60 s


def _engine(entry: dict[str, Any]) -> bool:
    return str(entry["actor"]).startswith("engine:")


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_fast_demo_promotes_rotates_and_rolls_back(tmp_path: Path) -> None:
    audit_out = tmp_path / "audit.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "controlplane", "demo", "--fast", "--audit-out", str(audit_out)],
        capture_output=True, text=True, timeout=FAST_DEMO_S, cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "every step had its expected outcome" in output

    entries = [json.loads(line) for line in audit_out.read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))

    def transitions(name: str) -> list[dict[str, Any]]:
        return [e for e in entries if e["kind"] == "Rollout" and e["name"] == name
                and str(e["action"]).startswith("rollout/")]

    # 1. promoted: v1 → v2 reached Succeeded, every step taken by the engine on analysis.
    promoted = transitions("payments-v2")
    assert promoted and promoted[-1]["action"] == "rollout/Succeeded", promoted
    assert all(_engine(e) for e in promoted)
    assert any("analysis passed" in str(e["reason"]) for e in promoted)

    # 2. rotated: an operator's rotation of v2's credential, after the promotion.
    rotations = [e for e in entries if e["action"] == "credential/rotate"
                 and e["name"] == "payments-v2-key"]
    assert len(rotations) == 1, rotations
    assert rotations[0]["seq"] > promoted[-1]["seq"]
    assert "0 failed requests" in output

    # 3. rolled back: v2 → v3 reached RolledBack by the engine, on failed analysis.
    rolled_back = transitions("payments-v3")
    assert rolled_back and rolled_back[-1]["action"] == "rollout/RolledBack", rolled_back
    assert all(_engine(e) for e in rolled_back), "an operator touched the v3 rollout"
    assert any(e["action"] == "rollout/RollingBack" and "analysis failed" in str(e["reason"])
               for e in rolled_back)

    # Nothing left behind: no process and no files under the demo's workdir.
    match = re.search(r"workdir (/\S+controlplane-demo-\w+)", output)
    assert match, output[:2000]
    workdir = match.group(1)
    assert not Path(workdir).exists()
    assert _processes_mentioning(workdir) == []
