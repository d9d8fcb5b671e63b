"""Local writes through the bridge raise the region's version records.

A successful replicated write leaves an `applied` record with its HLC and event id in
`xr-versions-us-east`; a failed write and a read leave none; a bucket that cannot be bound
costs no write, only a `failed` count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.bridge.outbox import Outbox
from services.bridge.service import outbox_path
from services.bridge.versions import LocalVersions
from services.xregion.local.supercluster import SuperCluster
from shared.envelope import encode
from shared.hlc import HlcStamp
from shared.natsconn import NatsConnection
from shared.provision import versions_bucket
from shared.regions import events_subject
from shared.retry import RetryPolicy
from shared.tasks import TaskSet
from shared.versions import Record, cas_write, read_record, record_key
from tests.bridge.helpers import (
    REGION,
    http_client,
    provision_region,
    running_bridge,
    send,
    service_settings,
    stored_events,
)
from tests.bridge.upstream_app import TestUpstream
from tests.harness.wait import wait_until
from tests.replayer.helpers import make_event

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def _count(service: str, outcome: str) -> float:
    labels = {"service": service, "outcome": outcome}
    return REGISTRY.get_sample_value("xr_bridge_version_records_total", labels) or 0.0


async def _claimed(kv: KeyValue, kv_key: str) -> tuple[Record, Record, int]:
    """A record applied at e10, then claimed by a replayer for e30 (newer): (the applied
    record, the claim, the claim's revision)."""
    applied = Record(str(HlcStamp(10, 0)), "e10", "applied", "replayer-x", 0.0)
    claim = Record(str(HlcStamp(30, 0)), "e30", "claimed", "replayer-x", time.time() + 60)
    applied_rev = await cas_write(kv, kv_key, applied, None)
    claim_rev = await cas_write(kv, kv_key, claim, applied_rev)
    assert claim_rev is not None
    return applied, claim, claim_rev


async def _record(kv: KeyValue, service: str, key: str) -> Record | None:
    record, _ = await read_record(kv, record_key(service, key))
    return record


async def test_a_write_leaves_an_applied_record_a_failed_write_none(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "ledger"
    kv = await js.key_value(versions_bucket(REGION))
    settings = service_settings(tmp_path, bridge_cluster, upstream, service)
    async with running_bridge(settings) as bridge, http_client() as http:
        failed = await send(http, "PUT", bridge.url, f"/{service}/a/echo?status=500", data=b"x")
        read = await send(http, "GET", bridge.url, f"/{service}/b/echo")
        first = await send(http, "PUT", bridge.url, f"/{service}/c/echo", data=b"1")
        second = await send(http, "PUT", bridge.url, f"/{service}/c/echo?v=2", data=b"2")
    assert (failed.status, read.status, first.status, second.status) == (500, 200, 200, 200)

    events = {e.event.event_id: e.event for e in await stored_events(js, service)}
    newest = events[second.headers["Xr-Event-Id"]]
    # The bridge has stopped, so every record it started has been written (or counted failed).
    record = await _record(kv, service, f"/{service}/c/echo")
    assert record is not None
    assert (record.hlc, record.event_id, record.state) == (
        str(newest.hlc),
        newest.event_id,
        "applied",
    )
    assert newest.hlc > events[first.headers["Xr-Event-Id"]].hlc
    assert await _record(kv, service, f"/{service}/a/echo") is None
    assert await _record(kv, service, f"/{service}/b/echo") is None
    # The two records of key c may land in either order: the older one then finds the newer.
    assert _count(service, "recorded") + _count(service, "superseded") == 2
    assert _count(service, "recorded") >= 1
    assert _count(service, "failed") == 0


async def test_the_record_is_written_while_the_bridge_runs(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "journal"
    kv = await js.key_value(versions_bucket(REGION))
    settings = service_settings(tmp_path, bridge_cluster, upstream, service)
    async with running_bridge(settings) as bridge:
        async with http_client() as http:
            reply = await send(http, "PUT", bridge.url, f"/{service}/7/echo", data=b"{}")
        assert reply.status == 200
        record = await wait_until(
            lambda: _record(kv, service, f"/{service}/7/echo"), 10, message="version record"
        )
    assert record is not None
    assert record.event_id == reply.headers["Xr-Event-Id"]
    assert record.state == "applied"


async def test_a_spooled_write_is_recorded_when_the_outbox_drains(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    """A write spooled while NATS was down got no record then (it failed with the publish);
    here the bridge that spooled it is gone, and the next one drains it at start."""
    service = "spooled"
    kv = await js.key_value(versions_bucket(REGION))
    settings = service_settings(tmp_path, bridge_cluster, upstream, service)
    event = make_event(f"/{service}/k/echo", service=service, origin=REGION, body=b"spooled")
    headers, payload = encode(event)
    path = outbox_path(settings.data_dir, settings.bridge.listen)
    path.parent.mkdir(parents=True)
    async with Outbox(path, max_bytes=1_000_000) as outbox:
        await outbox.put(
            event.event_id, event.key, events_subject(REGION, service), headers, payload
        )
    async with running_bridge(settings):
        pass  # the outbox is drained before the bridge is up
    assert [e.event.event_id for e in await stored_events(js, service)] == [event.event_id]
    record = await _record(kv, service, event.key)
    assert record is not None
    assert (record.hlc, record.event_id, record.state) == (
        str(event.hlc),
        event.event_id,
        "applied",
    )
    assert _count(service, "recorded") == 1


async def test_writes_go_on_when_the_version_bucket_is_missing(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "unversioned"
    settings = service_settings(tmp_path, bridge_cluster, upstream, service)
    stream = f"KV_{versions_bucket(REGION)}"
    await js.delete_stream(stream)
    try:
        async with running_bridge(settings) as bridge, http_client() as http:
            reply = await send(http, "PUT", bridge.url, f"/{service}/1/echo", data=b"x")
        assert reply.status == 200
        assert len(await stored_events(js, service)) == 1
        # One failed attempt, or two if a retry came before the bridge stopped; either way
        # the bridge gave it up when it stopped.
        assert _count(service, "failed") >= 1
        assert _count(service, "given_up") == 1
        assert _count(service, "recorded") == 0
    finally:
        await provision_region(settings)  # the session's other tests need the bucket back


async def test_a_started_record_counts_against_the_bound_at_once(
    bridge_cluster: SuperCluster, reader: NatsConnection
) -> None:
    """Records started in one burst (many responses going out in the same loop iteration)
    must see each other: otherwise none waits and the bound is no bound."""
    versions = LocalVersions(reader, region=REGION, owner="test", timeout_s=5, max_inflight=2)
    tasks = TaskSet("test-versions")
    hlc = str(HlcStamp(1, 0))
    async with versions:
        assert versions.bound
        started = [
            versions.start(tasks, "bounded", f"/bounded/{n}", hlc, f"e{n}", trace_id="t")
            for n in range(3)
        ]
        saturated_at_once = versions.saturated
        await asyncio.wait(started)
    assert saturated_at_once
    assert not versions.saturated


@pytest.mark.parametrize("coalesce_s", [0.0, 0.005], ids=["one-by-one", "in-bursts"])
async def test_a_remembered_record_never_moves_a_record_backwards(
    bridge_cluster: SuperCluster, reader: NatsConnection, js: JetStreamContext, coalesce_s: float
) -> None:
    """The bridge remembers the records it wrote; another writer (a replayer applying a newer
    event) moving one behind its back must make it read again, not write over it."""
    service, key = f"remembered-{int(coalesce_s * 1000)}", "/remembered/1"
    kv = await js.key_value(versions_bucket(REGION))

    def stamp(n: int) -> str:
        return str(HlcStamp(n, 0))

    async def record(n: int) -> None:
        await versions.record(service, key, stamp(n), f"e{n}", trace_id="t")

    async def newest() -> str | None:
        found = await _record(kv, service, key)
        return None if found is None else found.event_id

    recorded, superseded = _count(service, "recorded"), _count(service, "superseded")
    versions = LocalVersions(
        reader, region=REGION, owner="test", timeout_s=5, max_inflight=8, coalesce_s=coalesce_s
    )
    async with versions:
        await record(10)
        _, revision = await read_record(kv, record_key(service, key))
        replayed = Record(stamp(30), "e30", "applied", "replayer-x", 0.0)
        assert await cas_write(kv, record_key(service, key), replayed, revision) is not None
        await record(20)  # older than the replayed write it has not seen
        assert await newest() == "e30"
        await record(40)
        assert await newest() == "e40"
        await record(35)  # older than its own last write
        assert await newest() == "e40"
    assert _count(service, "recorded") - recorded == 2
    assert _count(service, "superseded") - superseded == 2
    assert _count(service, "failed") == 0


@pytest.mark.parametrize("settled_as", ["released", "applied"])
async def test_a_replayers_newer_claim_is_waited_out(
    bridge_cluster: SuperCluster, reader: NatsConnection, js: JetStreamContext, settled_as: str
) -> None:
    """A replayer's claim on a newer version may still be released back to the older record:
    the local write in between must then be recorded, not given up as superseded."""
    service, key = f"claimed-{settled_as}", "/claimed/1"
    kv = await js.key_value(versions_bucket(REGION))
    kv_key = record_key(service, key)
    applied, claim, claim_rev = await _claimed(kv, kv_key)

    tasks = TaskSet("test-claims")
    versions = LocalVersions(reader, region=REGION, owner="test", timeout_s=20, max_inflight=8)
    async with versions:
        pending = versions.start(tasks, service, key, str(HlcStamp(20, 0)), "e20", trace_id="t")
        # The bridge has read the claim once it remembers it (white box: no other sign).
        await wait_until(lambda: kv_key in versions._known, 10, message="the claim read")
        assert not pending.done(), f"gave up on a claim that may be released: {pending}"
        settled = (
            applied if settled_as == "released" else dataclasses.replace(claim, state="applied")
        )
        assert await cas_write(kv, kv_key, settled, claim_rev) is not None
        outcome = await asyncio.wait_for(pending, 20)
    record = await _record(kv, service, key)
    assert record is not None
    if settled_as == "released":
        assert (outcome, record.event_id) == ("recorded", "e20")
    else:
        assert (outcome, record.event_id) == ("superseded", "e30")


async def test_a_claim_that_never_settles_leaves_the_write_counted_failed(
    bridge_cluster: SuperCluster, reader: NatsConnection, js: JetStreamContext
) -> None:
    service, key = "claimed-forever", "/claimed/2"
    kv = await js.key_value(versions_bucket(REGION))
    claim = Record(str(HlcStamp(30, 0)), "e30", "claimed", "replayer-x", time.time() + 60)
    assert await cas_write(kv, record_key(service, key), claim, None) is not None
    failed = _count(service, "failed")
    versions = LocalVersions(reader, region=REGION, owner="test", timeout_s=0.3, max_inflight=8)
    with capture_logs() as logs:
        async with versions:
            outcome = await versions.record(service, key, str(HlcStamp(20, 0)), "e20", trace_id="t")
    assert outcome == "failed"
    assert _count(service, "failed") == failed + 1
    (line,) = [e for e in logs if e["event"] == "bridge.version.failed"]
    assert "did not settle" in line["error"]
    assert "e30" in line["error"]
    record = await _record(kv, service, key)
    assert record is not None
    assert (record.event_id, record.state) == ("e30", "claimed")  # never written over


async def test_a_failed_record_is_tried_again_and_lands_once_the_claim_is_released(
    bridge_cluster: SuperCluster, reader: NatsConnection, js: JetStreamContext
) -> None:
    """A replayer's claim on a newer version outlasted the record's deadline; the claim is
    then released back to the older record: the retry must record the local write."""
    service, key = "claimed-retry", "/claimed/3"
    kv = await js.key_value(versions_bucket(REGION))
    kv_key = record_key(service, key)
    applied, _, claim_rev = await _claimed(kv, kv_key)
    versions = LocalVersions(
        reader, region=REGION, owner="test", timeout_s=0.3, max_inflight=8,
        retry=RetryPolicy.fixed("bridge.version", (0.5,)),
    )  # fmt: skip
    async with versions:
        first = await versions.record(service, key, str(HlcStamp(20, 0)), "e20", trace_id="t")
        assert first == "failed"
        assert await cas_write(kv, kv_key, applied, claim_rev) is not None  # released
        await wait_until(
            lambda: _count(service, "recorded") == 1, 10, message="the retry recorded the write"
        )
    record = await _record(kv, service, key)
    assert record is not None
    assert (record.event_id, record.state) == ("e20", "applied")
    assert (_count(service, "failed"), _count(service, "given_up")) == (1, 0)


async def test_a_remembered_key_is_recorded_by_one_queued_compare_and_set(
    bridge_cluster: SuperCluster, reader: NatsConnection, js: JetStreamContext
) -> None:
    """`start` for a key remembered at an older version queues its compare-and-set at once and
    settles from the answer, with no task; a writer that moved the record behind its back
    makes it read again and decide as `record` does, never write over it."""
    service, key = "quick", "/quick/1"
    kv = await js.key_value(versions_bucket(REGION))
    kv_key = record_key(service, key)
    tasks = TaskSet("test-quick")
    recorded, superseded = _count(service, "recorded"), _count(service, "superseded")
    versions = LocalVersions(
        reader, region=REGION, owner="test", timeout_s=5, max_inflight=8, coalesce_s=0.005
    )

    def start(n: int) -> asyncio.Future[str]:
        return versions.start(tasks, service, key, str(HlcStamp(n, 0)), f"e{n}", trace_id="t")

    async def newest() -> str | None:
        found = await _record(kv, service, key)
        return None if found is None else found.event_id

    async with versions:
        assert await start(10) == "recorded"  # a key never seen: `record` creates it
        quick = start(20)
        assert not isinstance(quick, asyncio.Task)
        assert await quick == "recorded"
        assert await newest() == "e20"
        _, revision = await read_record(kv, kv_key)
        replayed = Record(str(HlcStamp(30, 0)), "e30", "applied", "replayer-x", 0.0)
        assert await cas_write(kv, kv_key, replayed, revision) is not None
        assert await start(25) == "superseded"  # refused, read again: older than e30
        assert await newest() == "e30"
        assert await start(40) == "recorded"
        assert await newest() == "e40"
    assert _count(service, "recorded") - recorded == 3
    assert _count(service, "superseded") - superseded == 1
    assert _count(service, "failed") == 0


async def test_a_queued_compare_and_set_that_fails_is_counted_and_tried_again(
    bridge_cluster: SuperCluster,
    reader: NatsConnection,
    js: JetStreamContext,
    upstream: TestUpstream,
    tmp_path: Path,
) -> None:
    """The bucket goes away under a remembered key: the queued compare-and-set's answer is
    an error, counted `failed` and logged, and the retry records the write once the bucket
    is back."""
    service, key = "quick-failed", "/quick/2"
    kv_key = record_key(service, key)
    settings = service_settings(tmp_path, bridge_cluster, upstream, service)
    tasks = TaskSet("test-quick-failed")
    versions = LocalVersions(
        reader, region=REGION, owner="test", timeout_s=2, max_inflight=8, coalesce_s=0.005,
        retry=RetryPolicy.fixed("bridge.version", (0.5,)),
    )  # fmt: skip

    def start(n: int) -> asyncio.Future[str]:
        return versions.start(tasks, service, key, str(HlcStamp(n, 0)), f"e{n}", trace_id="t")

    try:
        async with versions:
            assert await start(10) == "recorded"
            assert kv_key in versions._known  # white box: the next write takes the quick path
            await js.delete_stream(f"KV_{versions_bucket(REGION)}")
            with capture_logs() as logs:
                assert await start(20) == "failed"
            assert [e["event_id"] for e in logs if e["event"] == "bridge.version.failed"] == ["e20"]
            await provision_region(settings)
            await wait_until(
                lambda: _count(service, "recorded") == 2, 15, message="the retry recorded e20"
            )
    finally:
        await provision_region(settings)  # the session's other tests need the bucket
    kv = await js.key_value(versions_bucket(REGION))
    record = await _record(kv, service, key)
    assert record is not None
    assert (record.event_id, record.state) == ("e20", "applied")
    assert _count(service, "failed") == 1
