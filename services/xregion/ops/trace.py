"""`xregion trace EVENT_ID`: where one event is, in every region (docs/DESIGN.md §7).

The event is found by its id alone. A UUIDv7 holds the millisecond the bridge minted it (before
calling the service; the event is published after the service's answer), so every stream is
read from a little before that time (`_SKEW_S`, for clocks that differ) to `--window` after it,
with batched direct gets (the direct-get API: no consumer is created, the meta leader is not
needed). The search stops at the first copy found in each stream.

What it reports, one line per fact (with `--output json`, one `Step` each):

* `published`: the event in its origin's events stream (every region's is searched, so the
  origin need not be known), with its sequence and stored time;
* per other region T, from the origin's side: `forwarded` (the copy in `XR_REPLAY_T`, and how
  long after the publish it was stored), or why not: `refused` (a `forward_refused` dead
  letter in the origin's DLQ), or the state of the broadcaster's consumer `xr-broadcast-T`
  (acked without a copy: T was not a target of this event; not acked yet: waiting, with how
  many events are pending for T);
* per region, from the applying side: the version record of the event's key in
  `xr-versions-<region>` (this event applied; superseded by a newer version; not yet), and a
  dead letter with its reason, if the region's replayer gave up on it.

An event that its origin's events stream refused for good (the bridge answered 503 and filed
it in the origin's DLQ as `publish_refused`) is in no events stream: it is reported as
`refused` from that dead letter, and nothing else is, since it went nowhere.

Exit status: 0 when the event was found (published, or refused and dead-lettered), 1 when no
events stream holds it in the window, 2 for an id that is not a UUIDv7.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.xregion.errors import UsageError
from services.xregion.ops.connect import connected
from services.xregion.ops.output import iso_utc, number, print_json
from shared.dlq import FORWARD_REFUSED, PUBLISH_REFUSED, path_of
from shared.envelope import (
    HDR_DLQ_ERROR,
    HDR_DLQ_REASON,
    HDR_DLQ_TARGET,
    HDR_EVENT_ID,
    HDR_HLC,
    HDR_KEY,
    HDR_METHOD,
    HDR_PATH,
)
from shared.ids import is_uuid7, uuid7_time_ms
from shared.provision import versions_bucket
from shared.regions import (
    broadcast_consumer,
    dlq_stream,
    dlq_subject,
    events_stream,
    events_subject,
    replay_stream,
    replay_subject,
)
from shared.settings import Settings
from shared.versions import Record, record_key

__all__ = ["Found", "Step", "Trace", "check_event_id", "run_trace"]

# How far before the id's own time a search starts: the clocks of the bridge's host and the
# NATS servers may differ by this much.
_SKEW_S = 5.0
# Messages asked for per direct get, and the most read from one stream before giving up.
_BATCH = 256
_MAX_SCANNED = 200_000
_REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Found:
    """One stored message: where, when, and its headers."""

    stream: str
    seq: int
    subject: str
    time: dt.datetime
    headers: dict[str, str]


_LABELS = {"not_forwarded": "not forwarded", "dead_lettered": "dead-lettered"}


@dataclass(frozen=True, slots=True)
class Step:
    """One fact about the event in one region; `detail` is its line in the table."""

    region: str
    step: str  # published | forwarded | refused | not_forwarded | version | dead_lettered
    detail: str
    stream: str | None = None
    seq: int | None = None
    at: dt.datetime | None = None
    after_s: float | None = None
    state: str | None = None
    reason: str | None = None

    def line(self) -> str:
        return f"  {self.region:<12} {_LABELS.get(self.step, self.step):<15} {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "step": self.step,
            "stream": self.stream,
            "seq": self.seq,
            "at": iso_utc(self.at),
            "after_s": number(self.after_s),
            "state": self.state,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(slots=True)
class Trace:
    """What `trace` found: the event's headers (None when not found) and its steps."""

    event_id: str
    since: dt.datetime
    until: dt.datetime
    headers: dict[str, str] | None = None
    origin: str | None = None
    service: str | None = None
    steps: list[Step] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.headers is not None

    def lines(self) -> list[str]:
        if self.headers is None:
            return [
                f"event {self.event_id}: not in any region's events stream between "
                f"{_clock(self.since)} and {_clock(self.until)} (widen --window?)"
            ]
        h = self.headers
        head = (
            f"event {self.event_id}: {h.get(HDR_METHOD, '?')} {h.get(HDR_PATH, '?')} "
            f"(service {self.service}, key {h.get(HDR_KEY, '?')}, hlc {h.get(HDR_HLC, '?')})"
        )
        return [head, *(step.line() for step in self.steps)]

    def as_json(self) -> dict[str, Any]:
        h = self.headers or {}
        return {
            "event_id": self.event_id,
            "found": self.found,
            "origin": self.origin,
            "method": h.get(HDR_METHOD),
            "path": h.get(HDR_PATH),
            "service": self.service,
            "key": h.get(HDR_KEY),
            "hlc": h.get(HDR_HLC),
            "searched": {"from": iso_utc(self.since), "to": iso_utc(self.until)},
            "steps": [step.as_json() for step in self.steps],
        }


def check_event_id(event_id: str) -> None:
    """UsageError unless `event_id` is one (a canonical UUIDv7)."""
    if not is_uuid7(event_id):
        raise UsageError(f"{event_id!r} is not an event id (a lower-case UUIDv7)")


async def run_trace(
    settings: Settings, event_id: str, *, window_s: float, as_json: bool = False
) -> int:
    check_event_id(event_id)
    minted = dt.datetime.fromtimestamp(uuid7_time_ms(event_id) / 1000, dt.UTC)
    trace = Trace(
        event_id,
        since=minted - dt.timedelta(seconds=_SKEW_S),
        until=minted + dt.timedelta(seconds=window_s),
    )
    async with connected(settings, "trace") as conn:
        await _Tracer(conn.nc, conn.jetstream(), settings.regions, trace).run()
    if as_json:
        print_json(trace.as_json())
    else:
        print("\n".join(trace.lines()))
    return 0 if trace.found else 1


class _Tracer:
    """Fills a `Trace` from the streams and version buckets of every region."""

    def __init__(self, nc: Client, js: JetStreamContext, regions: list[str], trace: Trace) -> None:
        self._nc = nc
        self._js = js
        self._regions = regions
        self._trace = trace
        self._id = trace.event_id
        self._since = trace.since
        self._until = trace.until

    def _add(self, step: Step) -> None:
        self._trace.steps.append(step)

    async def run(self) -> None:
        published = await self._published()
        if published is None:
            await self._refused_at_origin()
            return
        origin = published.subject.split(".")[2]
        service = published.subject.split(".")[3]
        self._trace.headers = published.headers
        self._trace.origin, self._trace.service = origin, service
        detail = f"{published.stream} seq {published.seq} at {_clock(published.time)}"
        self._add(_stored(origin, "published", detail, published))
        for target in (r for r in self._regions if r != origin):
            await self._forwarding(published, origin, target, service)
        for region in self._regions:
            await self._applying(published, region, service)

    async def _published(self) -> Found | None:
        for region in self._regions:
            found = await self._find(events_stream(region), events_subject(region, ">"))
            if found is not None:
                return found
        return None

    async def _refused_at_origin(self) -> None:
        """Record a `publish_refused` dead letter of the event, if a region's bridge filed one."""
        for region in self._regions:
            letter = await self._find(
                dlq_stream(region),
                dlq_subject(region, region, ">"),
                open_ended=True,
                where=lambda found: found.headers.get(HDR_DLQ_REASON) == PUBLISH_REFUSED,
            )
            if letter is None:
                continue
            h = letter.headers
            self._trace.headers = h
            self._trace.origin, self._trace.service = region, path_of(letter.subject)[1]
            detail = (
                f"by {events_stream(region)}, not replicated: dead letter {letter.stream} seq "
                f"{letter.seq}: {h.get(HDR_DLQ_ERROR, '')} (xregion dlq replay, once the limit "
                "is raised)"
            )
            self._add(_stored(region, "refused", detail, letter, reason=PUBLISH_REFUSED))
            return

    async def _forwarding(self, published: Found, origin: str, target: str, service: str) -> None:
        copy = await self._find(replay_stream(target), replay_subject(target, origin, service))
        if copy is not None:
            after_s = (copy.time - published.time).total_seconds()
            detail = (
                f"{copy.stream} seq {copy.seq} at {_clock(copy.time)} ({after_s * 1000:+.0f} ms)"
            )
            self._add(_stored(target, "forwarded", detail, copy, after_s=after_s))
            return
        letter = await self._find(
            dlq_stream(origin),
            dlq_subject(origin, origin, service),
            open_ended=True,
            where=lambda found: found.headers.get(HDR_DLQ_TARGET) == target,
        )
        if letter is not None:
            error = letter.headers.get(HDR_DLQ_ERROR, "")
            detail = f"dead letter {letter.stream} seq {letter.seq}: {error}"
            self._add(_stored(target, "refused", detail, letter, reason=FORWARD_REFUSED))
            return
        state, detail = await self._consumer_state(published, target)
        self._add(Step(target, "not_forwarded", detail, state=state))

    async def _consumer_state(self, published: Found, target: str) -> tuple[str, str]:
        consumer = broadcast_consumer(target)
        try:
            info = await self._js.consumer_info(published.stream, consumer)
        except (nats.errors.Error, TimeoutError) as exc:
            return "unknown", f"consumer {consumer} unreadable: {exc!r}"
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        if (floor or 0) >= published.seq:
            return "acked", (
                f"{consumer} acked it, with no copy in the window: {target} is not one of its "
                "targets, or it was forwarded later (widen --window)"
            )
        pending = info.num_pending or 0
        return "pending", f"{consumer} has not acked it yet ({pending} more events pending)"

    async def _applying(self, published: Found, region: str, service: str) -> None:
        key = published.headers.get(HDR_KEY, "")
        version = (published.headers.get(HDR_HLC, ""), self._id)
        record = await self._record(region, service, key)
        state, detail = _version_state(record, version)
        self._add(Step(region, "version", detail, state=state))
        origin = published.subject.split(".")[2]
        letter = await self._find(
            dlq_stream(region),
            dlq_subject(region, origin, service),
            open_ended=True,
            where=lambda found: found.headers.get(HDR_DLQ_REASON) != FORWARD_REFUSED,
        )
        if letter is not None:
            reason = letter.headers.get(HDR_DLQ_REASON, "")
            error = letter.headers.get(HDR_DLQ_ERROR, "")
            detail = f"{letter.stream} seq {letter.seq}: {reason}: {error}"
            self._add(_stored(region, "dead_lettered", detail, letter, reason=reason or None))

    async def _record(self, region: str, service: str, key: str) -> Record | None:
        bucket = versions_bucket(region)
        subject = f"$KV.{bucket}.{record_key(service, key)}"
        try:
            msg = await self._js.get_msg(f"KV_{bucket}", subject=subject, direct=True)
        except (NotFoundError, nats.errors.Error, TimeoutError):
            return None
        return Record.decode(msg.data)

    async def _find(
        self,
        stream: str,
        subject: str,
        *,
        open_ended: bool = False,
        where: Callable[[Found], bool] | None = None,
    ) -> Found | None:
        """The first message of `stream` on `subject` in the time window (`open_ended`: from
        its start on, for dead letters, which may come hours later) that carries this event
        id (and satisfies `where`); None if there is none (or the stream cannot be read)."""
        until = None if open_ended else self._until
        scan = _scan(self._nc, stream, subject, self._since, until)
        try:
            async with contextlib.aclosing(scan):  # its inbox goes as soon as it is found
                async for found in scan:
                    if found.headers.get(HDR_EVENT_ID) == self._id and (
                        where is None or where(found)
                    ):
                        return found
        except (nats.errors.Error, TimeoutError):
            return None
        return None


def _stored(
    region: str,
    step: str,
    detail: str,
    found: Found,
    *,
    after_s: float | None = None,
    reason: str | None = None,
) -> Step:
    """A step about a stored message: its stream, sequence and stored time."""
    return Step(
        region, step, detail, found.stream, found.seq, found.time, after_s=after_s, reason=reason
    )


def _version_state(record: Record | None, version: tuple[str, str]) -> tuple[str, str]:
    """(state, detail) of the key's version record against the event's version."""
    if record is None:
        return "none", "no version record for its key"
    if record.version == version:
        if record.state == "applied":
            return "applied", "applied"
        return "claimed", "being applied (claimed)"
    if record.version > version:
        return "superseded", (
            f"superseded: the key holds a newer version (event {record.event_id})"
        )
    return "older", f"not applied: the key holds an older version (event {record.event_id})"


async def _scan(
    nc: Client, stream: str, subject: str, since: dt.datetime, until: dt.datetime | None
) -> AsyncGenerator[Found, None]:
    """Messages of `stream` on `subject` stored from `since` to `until` (None: to the end),
    in order, at most `_MAX_SCANNED`, read with batched direct gets (each batch ends with a
    204 status, or 404 when nothing is left)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        request: dict[str, object] = {"start_time": _rfc3339(since)}
        scanned = 0
        while scanned < _MAX_SCANNED:
            request |= {"batch": _BATCH, "next_by_subj": subject}
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
            )
            last = 0
            while True:
                msg = await sub.next_msg(_REQUEST_TIMEOUT_S)
                status = (msg.headers or {}).get("Status")
                if status == "404":
                    return
                if status is not None:
                    break  # 204: end of this batch
                found = _found(msg)
                if until is not None and found.time > until:
                    return
                last = found.seq
                scanned += 1
                yield found
            if not last:
                return
            request = {"seq": last + 1}
    finally:
        await sub.unsubscribe()


def _found(msg: Msg) -> Found:
    headers = dict(msg.headers or {})
    return Found(
        stream=headers.get("Nats-Stream", ""),
        seq=int(headers.get("Nats-Sequence", "0")),
        subject=headers.get("Nats-Subject", ""),
        time=_parse_time(headers.get("Nats-Time-Stamp", "")),
        headers=headers,
    )


def _parse_time(text: str) -> dt.datetime:
    """The server's RFC 3339 time (nanoseconds cut to what Python keeps)."""
    text = text.strip().removesuffix("Z")
    whole, _, fraction = text.partition(".")
    stamp = dt.datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}")
    return stamp.replace(tzinfo=dt.UTC)


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _clock(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
