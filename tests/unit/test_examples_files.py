"""What a newcomer copies is valid: every file in examples/ and every resource block in the
README passes apply's field validation and the rules across resources; examples/edge.yaml
health-checks a path the README walkthrough's `python -m http.server` answers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controlplane.model import DesiredState, Upstream, parse_yaml

ROOT = Path(__file__).resolve().parents[2]
_README_BLOCK = re.compile(r"^```yaml\n(apiVersion:.*?)^```$", re.M | re.S)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_file_applies(path: Path) -> None:
    DesiredState.of(parse_yaml(path.read_text())).check()


def test_readme_resource_blocks_apply() -> None:
    blocks = _README_BLOCK.findall((ROOT / "README.md").read_text())
    assert len(blocks) >= 2
    for block in blocks:
        DesiredState.of(parse_yaml(block)).check()


def test_edge_example_health_check_is_what_the_walkthrough_serves() -> None:
    # The walkthrough serves a directory holding only index.html: `/` answers 200, any
    # other path 404, and a 404 health check leaves Envoy in panic mode and a bluegreen
    # rollout waiting for ever.
    readme = (ROOT / "README.md").read_text()
    assert "python -m http.server 9001" in readme and "/tmp/v1/index.html" in readme
    upstreams = [r for r in parse_yaml((ROOT / "examples" / "edge.yaml").read_text())
                 if isinstance(r, Upstream)]
    for upstream in upstreams:
        check = upstream.spec.health_check
        assert check is None or check.path == "/", upstream.name
