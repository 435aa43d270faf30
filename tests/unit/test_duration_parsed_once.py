"""Durations are parsed once, when the model is validated: a `Duration` keeps the text
(stored, printed, compared as written) and its seconds; the pure rollout machine and
the engine's rules read the seconds and never parse text on an event."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from controlplane.errors import InvalidInputError
from controlplane.model import duration, ownership, parse_yaml, to_document
from controlplane.model.duration import Duration
from controlplane.model.resources import RolloutSpec
from controlplane.model.status import Phase, RolloutStatus
from controlplane.rollout import engine, machine
from controlplane.rollout.machine import FleetAcked, Operator, Tick

ROLLOUT = """\
apiVersion: controlplane/v1
kind: Rollout
metadata:
  name: payments-v2
spec:
  upstream: payments
  from: v1
  to: v2
  stepInterval: 1m30s
  rollbackWindow: 500ms
  ackTimeout: 2m
"""


def rollout_spec(text: str = ROLLOUT) -> RolloutSpec:
    spec = parse_yaml(text)[0].spec
    assert isinstance(spec, RolloutSpec)
    return spec


def test_a_duration_is_its_text_with_its_seconds() -> None:
    spec = rollout_spec()
    assert isinstance(spec.step_interval, Duration)
    assert (spec.step_interval.seconds, spec.rollback_window.seconds,
            spec.ack_timeout.seconds) == (90.0, 0.5, 120.0)
    assert spec.step_interval == "1m30s" and hash(spec.step_interval) == hash("1m30s")
    assert f"{spec.step_interval}" == "1m30s"
    default = rollout_spec(ROLLOUT.replace("  ackTimeout: 2m\n", "")).ack_timeout
    assert isinstance(default, Duration) and default.seconds == 60.0


def test_stored_and_printed_forms_are_the_text_as_written() -> None:
    resource = parse_yaml(ROLLOUT)[0]
    for reveal in (False, True):
        doc = to_document(resource, reveal_secrets=reveal)
        assert type(doc["spec"]["stepInterval"]) is str  # yaml.safe_dump takes no subclass
        assert yaml.safe_load(yaml.safe_dump(doc)) == yaml.safe_load(ROLLOUT)
    assert json.loads(json.dumps(to_document(resource))) == yaml.safe_load(ROLLOUT)


def test_a_bad_duration_is_refused_at_validation() -> None:
    with pytest.raises(InvalidInputError, match=r"spec\.stepInterval: 'soon' is not a duration"):
        parse_yaml(ROLLOUT.replace("1m30s", "soon"))


def test_the_rollout_rules_never_parse_a_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = rollout_spec()  # validated (and parsed) before parsing is forbidden

    def forbidden(text: str) -> float:
        raise AssertionError(f"{text!r} parsed again on an event")

    monkeypatch.setattr(duration, "parse_duration", forbidden)
    for module in (machine, engine, ownership):  # where the rules once parsed on each event
        monkeypatch.setattr(module, "parse_duration", forbidden, raising=False)

    waiting = RolloutStatus(phase=Phase.PROGRESSING, step=0, weight=10.0, since=0.0)
    paused = machine.transition(spec, waiting, Tick(120.0)).status  # ackTimeout
    assert paused is not None and paused.phase == Phase.PAUSED
    applied = RolloutStatus(phase=Phase.PROGRESSING, step=0, weight=10.0, applied=True)
    stepped = machine.transition(spec, applied, Tick(90.0)).status  # stepInterval
    assert stepped is not None and stepped.step == 1
    assert machine.transition(spec, applied, Tick(89.0)).status is None
    done = RolloutStatus(phase=Phase.SUCCEEDED, step=2, weight=100.0, applied=True,
                         since=0.0, finished_at=0.0, from_retained=True)
    retired = machine.transition(spec, done, Tick(1.0)).status  # rollbackWindow
    assert retired is not None and not retired.from_retained
    inside = machine.transition(spec, replace(done, from_retained=False),
                                Operator(0.5, "rollback", "op")).status
    assert inside is not None and inside.phase == Phase.ROLLING_BACK
    outside = machine.transition(spec, replace(done, from_retained=False),
                                 Operator(0.6, "rollback", "op"))
    assert outside.status is None
    assert machine.transition(spec, done, FleetAcked(1.0)).status is None
