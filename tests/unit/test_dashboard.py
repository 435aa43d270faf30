"""The Grafana dashboard and the control plane's own metrics stay in step."""

from __future__ import annotations

import json
import re
from pathlib import Path

from controlplane.telemetry import Telemetry

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / (
    "controlplane.json")


def test_every_metric_has_a_panel_and_every_panel_a_metric() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    queried = set(re.findall(r"\bcontrolplane_\w+", exprs))
    exported: set[str] = set()
    for family in Telemetry().registry.collect():
        if family.name.startswith("controlplane_"):
            exported |= {s.name for s in family.samples} | {family.name}
            exported |= {f"{family.name}_{suffix}" for suffix in ("total", "bucket", "count",
                                                                  "sum")}
    base = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in queried}
    families = {f.name for f in Telemetry().registry.collect()
                if f.name.startswith("controlplane_")}
    assert families <= base, families - base  # each family shown
    assert queried <= exported, queried - exported  # no panel queries a metric we lack
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert any("envoy_cluster_upstream_rq_time_bucket" in t["expr"]
               for p in panels for t in p["targets"])  # Envoy-side per-version latency
