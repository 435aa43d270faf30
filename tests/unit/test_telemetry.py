"""The control plane's own metrics and JSON logs: `Telemetry` fed by hand, the formatter."""

from __future__ import annotations

import io
import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.logformat import JsonFormatter, configure
from controlplane.model import DesiredState, parse_yaml
from controlplane.model.status import Phase, RolloutStatus
from controlplane.telemetry import Telemetry
from controlplane.xds import CLUSTER, ROUTE, Snapshot
from tests.support.states import with_rollout


def samples(telemetry: Telemetry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = telemetry.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(telemetry: Telemetry, name: str, **labels: str) -> float | None:
    return samples(telemetry).get((name, tuple(sorted(labels.items()))))


def test_xds_events_become_metrics() -> None:
    t = Telemetry()
    t.connected("edge")
    t.connected("edge")
    t.connected("mesh")
    t.disconnected("edge")
    snapshot = Snapshot.build({})
    t.published({"edge": snapshot})
    t.pushed("edge", CLUSTER, snapshot.version(CLUSTER), after_change=True)
    t.pushed("edge", ROUTE, snapshot.version(ROUTE), after_change=False)
    t.pushed("edge", ROUTE, "some-other-version", after_change=True)
    t.acked("edge", CLUSTER)
    t.nacked("edge", ROUTE)
    t.etcd_error("txn")

    assert value(t, "controlplane_xds_connected_proxies", group="edge") == 1
    assert value(t, "controlplane_xds_connected_proxies", group="mesh") == 1
    assert value(t, "controlplane_xds_pushes_total", type_url=CLUSTER) == 1
    assert value(t, "controlplane_xds_pushes_total", type_url=ROUTE) == 2
    # Latency counts only pushes a change caused, of the version that was published.
    assert value(t, "controlplane_xds_push_latency_seconds_count", type_url=CLUSTER) == 1
    assert value(t, "controlplane_xds_push_latency_seconds_count", type_url=ROUTE) is None
    assert value(t, "controlplane_xds_acks_total", type_url=CLUSTER) == 1
    assert value(t, "controlplane_xds_nacks_total", type_url=ROUTE) == 1
    assert value(t, "controlplane_etcd_errors_total", operation="txn") == 1
    assert value(t, "process_cpu_seconds_total") is not None


def test_each_control_plane_has_its_own_registry() -> None:
    a, b = Telemetry(), Telemetry()  # no "Duplicated timeseries" error
    a.connected("edge")
    assert value(b, "controlplane_xds_connected_proxies", group="edge") is None


def test_rollout_phase_weight_and_analysis_from_the_state() -> None:
    t = Telemetry()
    state = DesiredState.of(parse_yaml(with_rollout()))
    check = {"at": 1.0, "verdict": "passed", "detail": "ok"}
    state = state.with_status("payments-v2", RolloutStatus(
        phase=Phase.PROGRESSING, step=0, weight=10.0, last_check=check))
    t.observe_state(state)  # the first state: its last check is history, not counted
    assert value(t, "controlplane_rollout_phase", rollout="payments-v2",
                 phase="Progressing") == 1
    assert value(t, "controlplane_rollout_phase", rollout="payments-v2", phase="Paused") == 0
    assert value(t, "controlplane_rollout_weight_percent", rollout="payments-v2") == 10
    assert value(t, "controlplane_rollout_analysis_total", rollout="payments-v2",
                 verdict="passed") is None

    later = state.with_status("payments-v2", RolloutStatus(
        phase=Phase.PROGRESSING, step=1, weight=50.0,
        last_check={**check, "at": 2.0, "verdict": "failed"}))
    t.observe_state(later)
    t.observe_state(later)  # the same check seen again is not counted again
    assert value(t, "controlplane_rollout_analysis_total", rollout="payments-v2",
                 verdict="failed") == 1
    assert value(t, "controlplane_rollout_weight_percent", rollout="payments-v2") == 50

    t.observe_state(later.without("Rollout", "payments-v2"))
    assert value(t, "controlplane_rollout_weight_percent", rollout="payments-v2") is None
    assert value(t, "controlplane_rollout_phase", rollout="payments-v2",
                 phase="Progressing") is None


def test_json_log_lines_carry_extra_fields() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.telemetry.json")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("rollout %s: %s → %s (%s)", "payments-v2", "Progressing", "RollingBack",
                       "analysis failed", extra={"rollout": "payments-v2",
                                                 "from": "Progressing", "to": "RollingBack",
                                                 "reason": "analysis failed", "obj": object()})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it broke")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "warning" and first["logger"] == "tests.telemetry.json"
    assert first["msg"] == "rollout payments-v2: Progressing → RollingBack (analysis failed)"
    assert (first["rollout"], first["from"], first["to"], first["reason"]) == (
        "payments-v2", "Progressing", "RollingBack", "analysis failed")
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert first["obj"].startswith("<object")  # not JSON: its str
    assert not {"args", "levelno", "pathname", "msecs"} & first.keys()
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_configure(fmt: str) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        configure("info", fmt, stream=stream)
        logging.getLogger("controlplane.x").info("hello %d", 1, extra={"k": "v"})
        logging.getLogger("controlplane.x").debug("hidden")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    (line,) = stream.getvalue().splitlines()
    if fmt == "json":
        assert json.loads(line)["msg"] == "hello 1" and json.loads(line)["k"] == "v"
    else:
        assert line.endswith("INFO controlplane.x: hello 1")
