"""Property-based: the admin API over a real `controlplane serve` and its real etcd.
Valid resources round-trip through `get` unchanged; invalid ones are rejected with the
field and the reason, and nothing is written; operator verbs in any order never fail, and
what they and the engine write is whole: the stored status is the one its audit entries
lead to, link by link, each a state the machine can be in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.api import admin_pb2, admin_pb2_grpc
from controlplane.model import Upstream, from_stored
from controlplane.model.status import Phase, RolloutStatus
from controlplane.rollout.machine import VERBS
from controlplane.store.audit import AuditEntry
from controlplane.store.keys import Keys
from tests.support.controlplane import ServeProcess
from tests.support.etcd_access import serve_kv

pytestmark = pytest.mark.reliability

NAMES = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
DURATIONS = st.sampled_from(["100ms", "1s", "5s", "1m30s", "2h"])
ENDPOINTS = st.lists(
    st.builds(lambda a, p: f"127.0.0.{a}:{p}", st.integers(1, 254), st.integers(1, 65535)),
    min_size=1, max_size=3, unique=True,
)
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = ServeProcess(tmp_path_factory.mktemp("cp")).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def stub(server: ServeProcess) -> Iterator[admin_pb2_grpc.AdminStub]:
    with grpc.insecure_channel(server.admin) as channel:
        yield admin_pb2_grpc.AdminStub(channel)


def etcd_dump(server: ServeProcess) -> dict[bytes, bytes]:
    async def read() -> dict[bytes, bytes]:
        kv = serve_kv(server.data_dir)
        try:
            return {k.key: k.value for k in (await kv.range(b"/controlplane/")).kvs
                    if not k.key.startswith(b"/controlplane/fleet/")}
        finally:
            await kv.close()
    return asyncio.run(read())


@st.composite
def upstreams(draw: st.DrawFn) -> dict[str, Any]:
    versions = draw(st.dictionaries(NAMES, st.fixed_dictionaries(
        {"endpoints": ENDPOINTS}), min_size=1, max_size=3))
    spec: dict[str, Any] = {"active": draw(st.sampled_from(sorted(versions))),
                            "versions": versions}
    if draw(st.booleans()):
        spec["timeout"] = draw(DURATIONS)
    if draw(st.booleans()):
        spec["retries"] = {"attempts": draw(st.integers(0, 10)),
                           "on": draw(st.sampled_from(["5xx", "reset,connect-failure"]))}
    if draw(st.booleans()):
        spec["outlierDetection"] = {"consecutive5xx": draw(st.integers(1, 50)),
                                    "interval": draw(DURATIONS)}
    if draw(st.booleans()):
        spec["rateLimit"] = {"requestsPerSecond": draw(st.integers(1, 10_000))}
    return {"apiVersion": "controlplane/v1", "kind": "Upstream",
            "metadata": {"name": draw(NAMES)}, "spec": spec}


@given(doc=upstreams())
@SETTINGS
def test_valid_upstreams_round_trip_unchanged(
    doc: dict[str, Any], stub: admin_pb2_grpc.AdminStub
) -> None:
    stub.Apply(admin_pb2.ApplyRequest(documents=[json.dumps(doc)]))
    got = stub.Get(admin_pb2.GetRequest(kind="Upstream", name=doc["metadata"]["name"]))
    shown = json.loads(got.documents[0])
    # `status` is the traffic in force, the control plane's to write (apply drops it):
    # no route reaches this upstream, so none.
    assert shown.pop("status") == {"traffic": []}
    assert shown == doc


# (a path into a valid upstream document, a bad value, the field the error must name)
CORRUPTIONS = st.sampled_from([
    (("spec", "active"), "nope", "spec.active"),
    (("spec", "timeout"), "5 seconds", "spec.timeout"),
    (("spec", "retries"), {"attempts": 11}, "spec.retries.attempts"),
    (("spec", "retries"), {"on": "sometimes"}, "spec.retries.on"),
    (("spec", "rateLimit"), {"requestsPerSecond": 0}, "spec.rateLimit.requestsPerSecond"),
    (("spec", "bogus"), 1, "spec.bogus"),
    (("metadata", "name"), "Not_A_Name", "metadata.name"),
    (("spec", "versions"), {}, "spec.versions"),
    (("apiVersion",), "v2", "apiVersion"),
])


@given(doc=upstreams(), corruption=CORRUPTIONS)
@SETTINGS
def test_invalid_input_names_the_field_and_writes_nothing(
    doc: dict[str, Any], corruption: tuple[tuple[str, ...], Any, str],
    server: ServeProcess, stub: admin_pb2_grpc.AdminStub,
) -> None:
    path, value, field = corruption
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    valid_neighbour = {"apiVersion": "controlplane/v1", "kind": "Credential",
                       "metadata": {"name": "neighbour"},
                       "spec": {"header": "x-api-key", "value": "s"}}
    before = etcd_dump(server)
    with pytest.raises(grpc.RpcError) as info:
        stub.Apply(admin_pb2.ApplyRequest(
            documents=[json.dumps(valid_neighbour), json.dumps(doc)]))
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v for k, v in error.trailing_metadata() if k == "field-errors"]
    assert any(field in f for f in fields), fields
    assert etcd_dump(server) == before  # not even the valid document beside it


VERBS_UPSTREAM = {
    "apiVersion": "controlplane/v1", "kind": "Upstream", "metadata": {"name": "verbs"},
    "spec": {"active": "v1", "versions": {"v1": {"endpoints": ["127.0.0.1:1"]},
                                          "v2": {"endpoints": ["127.0.0.1:2"]}}}}
VERBS_ROLLOUT = {
    "apiVersion": "controlplane/v1", "kind": "Rollout", "metadata": {"name": "verbs-r"},
    "spec": {"upstream": "verbs", "from": "v1", "to": "v2", "steps": [10, 100],
             "stepInterval": "1h"}}
VERBS_STEPS = [10.0, 100.0]
PENDING = {"phase": "Pending", "step": -1, "weight": 0.0, "applied": False}
SET_ACTIVE = {"Succeeded": "v2", "RolledBack": "v1"}
"""Entering these phases switches the upstream's `active` in the same transaction."""


def machine_state_problem(summary: dict[str, Any]) -> str | None:
    """Why (phase, step, weight, applied) is no state the machine can be in with steps
    [10, 100]; None when it is one."""
    phase, step, weight = Phase(summary["phase"]), summary["step"], summary["weight"]
    at_step = VERBS_STEPS[step] if 0 <= step < len(VERBS_STEPS) else None
    last = len(VERBS_STEPS) - 1
    ok = {
        Phase.PENDING: step == -1 and weight == 0.0 and not summary["applied"],
        Phase.PROGRESSING: at_step is not None and at_step < 100 and weight == at_step,
        Phase.PAUSED: weight == (at_step if at_step is not None else 0.0) and weight < 100,
        Phase.PROMOTING: step == last and weight == 100.0,
        Phase.SUCCEEDED: step == last and weight == 100.0,
        Phase.ROLLING_BACK: weight == 0.0,
        Phase.ROLLED_BACK: weight == 0.0 and summary["applied"],
        Phase.ABORTED: weight == 0.0 and not summary["applied"],
    }[phase]
    return None if ok else f"no machine state: {summary}"


def summary_of(raw: bytes) -> dict[str, Any]:
    status = RolloutStatus.from_json(raw)
    return {"phase": str(status.phase), "step": status.step, "weight": status.weight,
            "applied": status.applied}


def stored_status(dump: dict[bytes, bytes]) -> dict[str, Any]:
    """The rollout's status as stored; none yet is Pending (a verb on a Pending rollout
    that changes nothing writes nothing)."""
    raw = dump.get(Keys().status("Rollout", "verbs-r"))
    return summary_of(raw) if raw else dict(PENDING)


def check_written_whole(dump: dict[bytes, bytes], since_seq: int,
                        start: dict[str, Any]) -> None:
    """The rollout's stored status and the upstream it switches are what the audit log's
    transitions since `since_seq` lead to from `start` (the status then), link by link:
    no status written without its entry, no `active` switched without the status that
    switches it, no move out of a final phase, every state one the machine can be in."""
    keys = Keys()
    entries = sorted((AuditEntry.from_json(v) for k, v in dump.items()
                      if k.startswith(keys.audit)), key=lambda e: e.seq)
    entries = [e for e in entries if e.seq > since_seq]
    rollout = [e for e in entries if e.kind == "Rollout" and e.name == "verbs-r"
               and e.action.startswith("rollout/")]
    stored = stored_status(dump)
    assert machine_state_problem(stored) is None, machine_state_problem(stored)
    previous = start
    for entry in rollout:
        before, after = dict(entry.before or {}), dict(entry.after or {})
        assert before == previous, f"entry {entry.seq} skips a link: {before} after {previous}"
        assert before["phase"] not in ("RolledBack", "Aborted"), f"left a final phase: {entry}"
        assert entry.action == f"rollout/{after['phase']}", entry
        assert machine_state_problem(after) is None, machine_state_problem(after)
        previous = after
    assert stored == previous, f"stored status {stored} is not the audited {previous}"

    by_seq = {e.seq: e for e in entries}
    for entry in entries:
        if entry.action != "rollout/set-active":
            continue
        cause = by_seq.get(entry.seq - 1)  # the same transaction, the entry before
        assert cause is not None and cause.kind == "Rollout" and cause.after is not None, entry
        assert (entry.after or {})["spec"]["active"] == SET_ACTIVE[cause.after["phase"]], entry
    upstream = from_stored(dump[keys.resource("Upstream", "verbs")])
    assert isinstance(upstream, Upstream)
    if stored["phase"] in SET_ACTIVE:
        assert upstream.spec.active == SET_ACTIVE[stored["phase"]], (stored, upstream.spec)


def audit_head(dump: dict[bytes, bytes]) -> int:
    raw = dump.get(Keys().audit_head)
    return int(json.loads(raw)["seq"]) if raw else 0


@given(verbs=st.lists(st.sampled_from(sorted(VERBS)), min_size=1, max_size=8))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_operator_verbs_in_any_order_never_fail_or_half_write(
    verbs: list[str], server: ServeProcess, stub: admin_pb2_grpc.AdminStub
) -> None:
    stub.Apply(admin_pb2.ApplyRequest(documents=[json.dumps(VERBS_UPSTREAM)]))
    before = etcd_dump(server)
    # A rollout the last example could not delete (still running) goes on from its status.
    since, start = audit_head(before), stored_status(before)
    stub.Apply(admin_pb2.ApplyRequest(documents=[json.dumps(VERBS_ROLLOUT)]))
    for verb in verbs:
        response = stub.RolloutAction(admin_pb2.RolloutActionRequest(name="verbs-r", verb=verb))
        shown = json.loads(response.status)
        summary = {k: shown[k] for k in PENDING}
        assert machine_state_problem(summary) is None, (verb, machine_state_problem(summary))
        # etcd's one read is one revision: the engine may be mid-way, never half-way.
        check_written_whole(etcd_dump(server), since, start)
    stub.Delete(admin_pb2.DeleteRequest(kind="Rollout", name="verbs-r"))
