"""Property-based: the admin API over a real `controlplane serve` and its real etcd.
Valid resources round-trip through `get` unchanged; invalid ones are rejected with the
field and the reason, and nothing is written; operator verbs never fail or half-write."""

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


@given(verbs=st.lists(st.sampled_from(["pause", "resume", "promote", "promote-full",
                                       "abort", "rollback"]), min_size=1, max_size=8))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_operator_verbs_in_any_order_never_fail(
    verbs: list[str], stub: admin_pb2_grpc.AdminStub
) -> None:
    docs = [
        {"apiVersion": "controlplane/v1", "kind": "Upstream", "metadata": {"name": "verbs"},
         "spec": {"active": "v1", "versions": {"v1": {"endpoints": ["127.0.0.1:1"]},
                                               "v2": {"endpoints": ["127.0.0.1:2"]}}}},
    ]
    stub.Apply(admin_pb2.ApplyRequest(documents=[json.dumps(d) for d in docs]))
    rollout = {"apiVersion": "controlplane/v1", "kind": "Rollout",
               "metadata": {"name": "verbs-r"},
               "spec": {"upstream": "verbs", "from": "v1", "to": "v2", "steps": [10, 100],
                        "stepInterval": "1h"}}
    stub.Apply(admin_pb2.ApplyRequest(documents=[json.dumps(rollout)]))
    for verb in verbs:
        response = stub.RolloutAction(admin_pb2.RolloutActionRequest(name="verbs-r", verb=verb))
        status = json.loads(response.status)
        assert status["phase"] in {"Pending", "Progressing", "Paused", "Promoting", "Succeeded",
                                   "RollingBack", "RolledBack", "Aborted"}
        assert 0 <= status["weight"] <= 100
    stub.Delete(admin_pb2.DeleteRequest(kind="Rollout", name="verbs-r"))
