"""`xregion provision`: a region's streams, KV buckets and durable consumers (docs/DESIGN.md
§3, §6a).

Two halves:

* `plan(settings, replicas)` — pure: the exact stream and consumer configurations a region
  needs, derived from its region file;
* `apply(js, plan)` — IO: creates what is missing, updates what differs, leaves the rest alone
  and reports each asset as `created`, `updated` or `unchanged`. Running it twice changes
  nothing the second time.

Where a consumer starts is fixed when it is created (the server refuses to change it later, and
a consumer's position is lost with it). A broadcaster consumer created on an events stream that
already holds events (a consumer deleted by mistake, a region added to a running deployment)
starts at the stream's first event by default, so nothing is skipped: every stored event is
forwarded to that target again, and its replayers drop those they applied already (as
duplicate or stale, without calling the service), but up to `max_age` of history is a long
burst ahead of new writes. `plan(..., broadcast_start=T)` starts such a consumer at time T
instead (events before T are not forwarded to it). `Result.note` says which happened and how
many events that is.

Services bind to these assets at run time and never need the JetStream meta leader to run;
provisioning does need it (every create/update is a meta operation, docs/NATS.md §1.6).

KV buckets are created as streams with explicit placement and then opened as buckets, because
nats-py drops the placement of `create_key_value` (docs/NATS.md §1.4).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    Placement,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from shared import regions
from shared.settings import Settings

__all__ = [
    "MAX_REPLICAS",
    "Action",
    "ConsumerPlan",
    "KvPlan",
    "ProvisionPlan",
    "Result",
    "apply",
    "control_bucket",
    "plan",
    "replicas_for",
    "versions_bucket",
]

MAX_REPLICAS = 3


class Action(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class Result:
    kind: str  # "stream" | "kv" | "consumer"
    name: str
    action: Action
    note: str | None = None  # what an operator should know (a consumer created on old events)


@dataclass(frozen=True, slots=True)
class ConsumerPlan:
    stream: str
    config: ConsumerConfig
    forwards_to: str | None = None  # a broadcaster consumer's target region


@dataclass(frozen=True, slots=True)
class KvPlan:
    bucket: str
    stream: StreamConfig


@dataclass(frozen=True, slots=True)
class ProvisionPlan:
    region: str
    streams: tuple[StreamConfig, ...]
    buckets: tuple[KvPlan, ...]
    consumers: tuple[ConsumerPlan, ...]


def control_bucket(region: str) -> str:
    """KV bucket holding operator switches for a region's broadcasters (pause/resume)."""
    return f"xr-control-{regions.validate_region(region)}"


def versions_bucket(region: str) -> str:
    """KV bucket holding the newest applied HLC per (service, key) in a region."""
    return f"xr-versions-{regions.validate_region(region)}"


def replicas_for(cluster_servers: int, configured: int | None = None) -> int:
    """Stream replicas: as many as the cluster has servers, up to three, unless configured."""
    if configured is not None:
        return configured
    return max(1, min(MAX_REPLICAS, cluster_servers))


def plan(
    settings: Settings, replicas: int, *, broadcast_start: dt.datetime | None = None
) -> ProvisionPlan:
    """Everything region `settings.region` needs, as server-side configurations.

    `broadcast_start`: where a broadcaster consumer that has to be created starts (default:
    the first event of the stream); existing consumers keep their position.
    """
    region = settings.region
    return ProvisionPlan(
        region=region,
        streams=tuple(_streams(settings, replicas)),
        buckets=(
            _kv(settings, control_bucket(region), replicas, max_age_s=0.0),
            _kv(settings, versions_bucket(region), replicas, settings.streams.max_age_s),
        ),
        consumers=tuple(_consumers(settings, broadcast_start)),
    )


def _streams(settings: Settings, replicas: int) -> Iterable[StreamConfig]:
    region = settings.region
    limits = settings.streams
    for name, subject, description in (
        (regions.events_stream(region), f"xr.events.{region}.>", "writes accepted here"),
        (regions.replay_stream(region), f"xr.replay.{region}.>", "events to apply here"),
        (regions.dlq_stream(region), f"xr.dlq.{region}.>", "events that could not be applied"),
    ):
        yield StreamConfig(
            name=name,
            description=f"xregion {region}: {description}",
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=limits.max_age_s,
            max_bytes=limits.max_bytes,
            duplicate_window=limits.duplicate_window_s,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
            placement=Placement(cluster=region),
        )


def _kv(settings: Settings, bucket: str, replicas: int, max_age_s: float) -> KvPlan:
    # The same stream shape nats-py's create_key_value makes (history 1), plus placement.
    stream = StreamConfig(
        name=f"KV_{bucket}",
        description=f"xregion {settings.region}: KV bucket {bucket}",
        subjects=[f"$KV.{bucket}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_msgs_per_subject=1,
        max_age=max_age_s,
        allow_rollup_hdrs=True,
        deny_delete=True,
        allow_direct=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=min(120.0, max_age_s) if max_age_s else 120.0,
        placement=Placement(cluster=settings.region),
    )
    return KvPlan(bucket=bucket, stream=stream)


def _consumers(settings: Settings, broadcast_start: dt.datetime | None) -> Iterable[ConsumerPlan]:
    region = settings.region
    events = regions.events_stream(region)
    broadcaster = settings.broadcaster
    for target in settings.peer_regions():
        # Shared by every broadcaster instance of the region: max_ack_pending bounds the sum
        # of their windows; each instance keeps the events it holds alive with in_progress().
        yield ConsumerPlan(
            stream=events,
            config=_durable(
                regions.broadcast_consumer(target),
                f"xregion broadcaster {region} -> {target}",
                filter_subject=f"xr.events.{region}.>",
                max_ack_pending=broadcaster.max_ack_pending,
                ack_wait_s=broadcaster.ack_wait_s,
                start=broadcast_start,
            ),
            forwards_to=target,
        )
    yield ConsumerPlan(
        stream=regions.replay_stream(region),
        config=_durable(
            regions.replay_consumer(),
            f"xregion replayer {region}",
            filter_subject=f"xr.replay.{region}.>",
            max_ack_pending=settings.replayer.max_ack_pending,
            ack_wait_s=settings.replayer.ack_wait_s,
        ),
    )


def _durable(
    name: str,
    description: str,
    *,
    filter_subject: str,
    max_ack_pending: int,
    ack_wait_s: float = 30.0,
    start: dt.datetime | None = None,
) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name,
        name=name,
        description=description,
        deliver_policy=DeliverPolicy.ALL if start is None else DeliverPolicy.BY_START_TIME,
        opt_start_time=start,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=max_ack_pending,
        filter_subject=filter_subject,
    )


async def apply(js: JetStreamContext, wanted: ProvisionPlan) -> list[Result]:
    """Create or update every asset of `wanted`; returns what happened to each, in order."""
    results = [await _ensure_stream(js, config, "stream") for config in wanted.streams]
    for kv in wanted.buckets:
        result = await _ensure_stream(js, kv.stream, "kv")
        await js.key_value(kv.bucket)  # proves the stream is usable as a bucket
        results.append(dataclasses.replace(result, name=kv.bucket))
    for consumer in wanted.consumers:
        results.append(await _ensure_consumer(js, consumer))
    return results


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, kind: str) -> Result:
    assert config.name is not None
    try:
        current = (await js.stream_info(config.name)).config
    except NotFoundError:
        await js.add_stream(config)
        return Result(kind, config.name, Action.CREATED)
    if _differs(config, current):
        await js.update_stream(config)
        return Result(kind, config.name, Action.UPDATED)
    return Result(kind, config.name, Action.UNCHANGED)


async def _ensure_consumer(js: JetStreamContext, consumer: ConsumerPlan) -> Result:
    name = consumer.config.durable_name
    assert name is not None
    label = f"{consumer.stream}/{name}"
    try:
        current = (await js.consumer_info(consumer.stream, name)).config
    except NotFoundError:
        await js.add_consumer(consumer.stream, consumer.config)
        note = await _start_note(js, consumer)
        return Result("consumer", label, Action.CREATED, note)
    # Where it starts was settled at creation: keep it (the server refuses to change it).
    wanted = dataclasses.replace(
        consumer.config,
        **{field: getattr(current, field) for field in _SET_AT_CREATION},
    )
    if _differs(wanted, current):
        await js.add_consumer(consumer.stream, wanted)  # create-or-update
        return Result("consumer", label, Action.UPDATED)
    return Result("consumer", label, Action.UNCHANGED)


# Consumer fields that only a creation sets (the position it starts from).
_SET_AT_CREATION = ("deliver_policy", "opt_start_seq", "opt_start_time")


async def _start_note(js: JetStreamContext, consumer: ConsumerPlan) -> str | None:
    """For a broadcaster consumer just created on a stream holding events: where it starts,
    and how many stored events that sends to its target."""
    if consumer.forwards_to is None:
        return None
    config = consumer.config
    stored = (await js.stream_info(consumer.stream)).state.messages
    if not stored:
        return None
    info = await js.consumer_info(consumer.stream, config.durable_name or "")
    pending = info.num_pending or 0
    target = consumer.forwards_to
    if config.opt_start_time is None:
        return (
            f"starts at the stream's first event: {pending} stored events are forwarded to "
            f"{target} again (its replayers drop those they applied); to start a re-created "
            "consumer later, delete it and provision with --broadcast-start TIME"
        )
    return (
        f"starts at {config.opt_start_time.isoformat()}: {pending} of the {stored} stored "
        f"events are forwarded to {target}, the {stored - pending} before that time are not"
    )


def _differs(wanted: Any, current: Any) -> bool:
    """True when a field we set differs from the server's; fields we leave unset don't count."""
    return any(
        _normal(value) != _normal(getattr(current, key, None))
        for key, value in _set_fields(wanted).items()
    )


def _set_fields(config: Any) -> Mapping[str, Any]:
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) is not None
    }


def _normal(value: Any) -> Any:
    """Comparable form: enums by value, dataclasses by their set fields, lists as tuples."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return tuple(sorted((k, _normal(v)) for k, v in _set_fields(value).items()))
    if isinstance(value, list):
        return tuple(_normal(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
