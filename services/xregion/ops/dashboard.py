"""The frame model of `xregion top`: two scrape rounds in, one `Frame` of plain numbers out.

Pure: no sockets, no clock. Rates are counter increases between the previous round and the
current one, per endpoint (a counter that went down means the process restarted: its whole
value is the increase), summed over a region's instances. Lag quantiles come from the
`xr_replayer_lag_seconds` buckets at the target: from the bucket increases between the rounds
when events arrived in between (`window`), else from the cumulative buckets (`cumulative`).

Where each number is read (docs/DESIGN.md §8 names):

=====================  ===========  ==================================================
number                 read at      metric
=====================  ===========  ==================================================
forwarded/s, path      origin       `xr_broadcaster_forwarded_total{origin,target,outcome}`
applied/s, path        target       `xr_replayer_events_total{origin,service,outcome}`
lag p50/p99, path      target       `xr_replayer_lag_seconds{origin}` (histogram)
canary age, path       target       `xr_replication_canary_age_seconds{origin,target}`
backlog, state, path   origin       `xr_broadcaster_backlog|paused|unreachable{target}`
replay backlog         region       `xr_replayer_backlog`
DLQ                    region       `xr_dlq_messages`
retries/s              region       `xr_replayer_upstream_retries_total`,
                                    `xr_replayer_events_total{outcome="retried"}`
outbox                 region       `xr_bridge_outbox_depth`
conflicts, repeats     region       `xr_replayer_conflicts_total`,
                                    `xr_replayer_events_total{outcome="repeated"}`
                                    (totals since the replayers started)
=====================  ===========  ==================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from services.xregion.ops.output import count as json_count
from services.xregion.ops.output import number as json_number
from services.xregion.ops.scrape import Scrape

__all__ = [
    "Frame",
    "HealthRow",
    "LagSource",
    "PathRow",
    "RegionRow",
    "build_frame",
    "counter_rate",
    "gauge",
    "histogram_buckets",
    "quantile",
    "total",
]

LagSource = Literal["window", "cumulative"]
Buckets = dict[float, float]  # upper bound (le) -> cumulative count

FORWARDED = "xr_broadcaster_forwarded_total"
REPLAYED = "xr_replayer_events_total"
CONFLICTS = "xr_replayer_conflicts_total"
LAG_BUCKET = "xr_replayer_lag_seconds_bucket"
CANARY_AGE = "xr_replication_canary_age_seconds"
BC_BACKLOG = "xr_broadcaster_backlog"
BC_PAUSED = "xr_broadcaster_paused"
BC_UNREACHABLE = "xr_broadcaster_unreachable"
REPLAY_BACKLOG = "xr_replayer_backlog"
DLQ = "xr_dlq_messages"
UPSTREAM_RETRIES = "xr_replayer_upstream_retries_total"
OUTBOX = "xr_bridge_outbox_depth"


@dataclass(frozen=True, slots=True)
class PathRow:
    """One replication path, origin -> target. None: nothing to show (yet)."""

    origin: str
    target: str
    forwarded_per_s: float | None
    applied_per_s: float | None
    applied_total: float | None
    lag_p50_s: float | None
    lag_p99_s: float | None
    lag_source: LagSource | None
    canary_age_s: float | None
    backlog: float | None
    state: str | None  # "ok" | "paused" | "unreachable"; None: origin not scraped

    def as_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "target": self.target,
            "forwarded_per_s": json_number(self.forwarded_per_s, 3),
            "applied_per_s": json_number(self.applied_per_s, 3),
            "applied_total": json_count(self.applied_total),
            "lag_p50_s": json_number(self.lag_p50_s),
            "lag_p99_s": json_number(self.lag_p99_s),
            "lag_source": self.lag_source,
            "canary_age_s": json_number(self.canary_age_s),
            "backlog": json_count(self.backlog),
            "state": self.state,
        }


@dataclass(frozen=True, slots=True)
class RegionRow:
    region: str
    replay_backlog: float | None
    dlq: float | None
    upstream_retries_per_s: float | None
    retried_per_s: float | None  # events nak'ed for redelivery
    outbox: float | None
    conflicts: float | None = None  # apply events applied after a newer one of their key
    repeated: float | None = None  # calls made again after a replayer died mid-call

    def as_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "replay_backlog": json_count(self.replay_backlog),
            "dlq": json_count(self.dlq),
            "upstream_retries_per_s": json_number(self.upstream_retries_per_s, 3),
            "retried_per_s": json_number(self.retried_per_s, 3),
            "outbox": json_count(self.outbox),
            "conflicts": json_count(self.conflicts),
            "repeated": json_count(self.repeated),
        }


@dataclass(frozen=True, slots=True)
class HealthRow:
    region: str
    service: str
    url: str
    up: bool
    ready: str | None
    error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "service": self.service,
            "url": self.url,
            "up": self.up,
            "ready": self.ready,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Frame:
    paths: tuple[PathRow, ...]
    regions: tuple[RegionRow, ...]
    health: tuple[HealthRow, ...]
    window_s: float | None  # seconds between the two rounds; None: one round only

    @property
    def endpoints_up(self) -> int:
        return sum(1 for row in self.health if row.up)

    def as_json(self) -> dict[str, Any]:
        """The frame as `top --once --output json` prints it (after its `at`)."""
        return {
            "window_s": json_number(self.window_s, 3),
            "endpoints_up": self.endpoints_up,
            "endpoints": len(self.health),
            "paths": [row.as_json() for row in self.paths],
            "regions": [row.as_json() for row in self.regions],
            "health": [row.as_json() for row in self.health],
        }


Aggregate = Callable[[Iterable[float]], float]


def build_frame(
    regions: Sequence[str], previous: Sequence[Scrape] | None, current: Sequence[Scrape]
) -> Frame:
    """The frame of the `current` round; rates and windows need the `previous` one."""
    view = _View(current, previous or ())
    return Frame(
        paths=tuple(
            _path_row(view, origin, target)
            for origin in regions
            for target in regions
            if origin != target
        ),
        regions=tuple(_region_row(view, region) for region in regions),
        health=tuple(_health_row(s) for s in current),
        window_s=_window(previous, current),
    )


class _View:
    """The up endpoints of one round by (region, service), with their previous scrape."""

    def __init__(self, current: Sequence[Scrape], previous: Sequence[Scrape]) -> None:
        before = {s.endpoint.url: s for s in previous if s.up}
        self._now: dict[tuple[str, str], list[Scrape]] = {}
        self._pairs: dict[tuple[str, str], list[tuple[Scrape, Scrape]]] = {}
        for scrape in current:
            if not scrape.up:
                continue
            key = (scrape.endpoint.region, scrape.endpoint.service)
            self._now.setdefault(key, []).append(scrape)
            if (old := before.get(scrape.endpoint.url)) is not None:
                self._pairs.setdefault(key, []).append((old, scrape))

    def now(self, region: str, service: str) -> list[Scrape]:
        return self._now.get((region, service), [])

    def pairs(self, region: str, service: str) -> list[tuple[Scrape, Scrape]]:
        return self._pairs.get((region, service), [])


def _path_row(view: _View, origin: str, target: str) -> PathRow:
    fwd = {"origin": origin, "target": target, "outcome": "forwarded"}
    applied = {"origin": origin, "outcome": "applied"}
    p50, p99, source = _lag(view, origin, target)
    brokers = view.now(origin, "broadcaster")
    return PathRow(
        origin=origin,
        target=target,
        forwarded_per_s=counter_rate(view.pairs(origin, "broadcaster"), FORWARDED, fwd),
        applied_per_s=counter_rate(view.pairs(target, "replayer"), REPLAYED, applied),
        applied_total=total(view.now(target, "replayer"), REPLAYED, applied),
        lag_p50_s=p50,
        lag_p99_s=p99,
        lag_source=source,
        canary_age_s=gauge(
            view.now(target, "replayer"), CANARY_AGE, {"origin": origin, "target": target}, min
        ),
        backlog=gauge(brokers, BC_BACKLOG, {"target": target}, max),
        state=_path_state(brokers, target),
    )


def _path_state(broadcasters: Sequence[Scrape], target: str) -> str | None:
    if not broadcasters:
        return None
    if gauge(broadcasters, BC_PAUSED, {"target": target}, max):
        return "paused"
    if gauge(broadcasters, BC_UNREACHABLE, {"target": target}, max):
        return "unreachable"
    return "ok"


def _lag(
    view: _View, origin: str, target: str
) -> tuple[float | None, float | None, LagSource | None]:
    labels = {"origin": origin}
    window = _bucket_increase(view.pairs(target, "replayer"), labels)
    source: LagSource = "window"
    if _count(window) == 0:
        window = _sum_buckets(
            histogram_buckets(s, LAG_BUCKET, labels) for s in view.now(target, "replayer")
        )
        source = "cumulative"
    if _count(window) == 0:
        return None, None, None
    return quantile(0.5, window), quantile(0.99, window), source


def _region_row(view: _View, region: str) -> RegionRow:
    replayers = view.now(region, "replayer")
    pairs = view.pairs(region, "replayer")
    return RegionRow(
        region=region,
        replay_backlog=gauge(replayers, REPLAY_BACKLOG, {}, max),
        dlq=gauge(replayers, DLQ, {}, max),
        upstream_retries_per_s=counter_rate(pairs, UPSTREAM_RETRIES, {}),
        retried_per_s=counter_rate(pairs, REPLAYED, {"outcome": "retried"}),
        outbox=gauge(view.now(region, "bridge"), OUTBOX, {}, sum),
        conflicts=gauge(replayers, CONFLICTS, {}, sum),
        repeated=gauge(replayers, REPLAYED, {"outcome": "repeated"}, sum),
    )


def _health_row(scrape: Scrape) -> HealthRow:
    e = scrape.endpoint
    return HealthRow(e.region, e.service, e.url, scrape.up, scrape.ready, scrape.error)


def _window(previous: Sequence[Scrape] | None, current: Sequence[Scrape]) -> float | None:
    if not previous or not current:
        return None
    return max(s.at for s in current) - max(s.at for s in previous)


# -- numbers out of samples -------------------------------------------------------------------


def total(scrapes: Sequence[Scrape], name: str, labels: Mapping[str, str]) -> float | None:
    """Sum of the matching samples over `scrapes`; None when no endpoint is up."""
    if not scrapes:
        return None
    return sum(sample.value for s in scrapes for sample in s.samples(name, labels))


def gauge(
    scrapes: Sequence[Scrape], name: str, labels: Mapping[str, str], aggregate: Aggregate
) -> float | None:
    """`aggregate` of the matching samples over `scrapes`; None when there are none."""
    values = [sample.value for s in scrapes for sample in s.samples(name, labels)]
    return aggregate(values) if values else None


def counter_rate(
    pairs: Sequence[tuple[Scrape, Scrape]], name: str, labels: Mapping[str, str]
) -> float | None:
    """Per-second increase of the matching counters, summed over (previous, current) pairs
    of the same endpoint. A counter that went down restarted: its current value counts."""
    rate: float | None = None
    for old, new in pairs:
        elapsed = new.at - old.at
        if elapsed <= 0:
            continue
        before = sum(s.value for s in old.samples(name, labels))
        after = sum(s.value for s in new.samples(name, labels))
        increase = after - before if after >= before else after
        rate = (rate or 0.0) + increase / elapsed
    return rate


def histogram_buckets(scrape: Scrape, name: str, labels: Mapping[str, str]) -> Buckets:
    """Cumulative bucket counts by upper bound, summed over the matching label sets."""
    buckets: Buckets = {}
    for sample in scrape.samples(name, labels):
        bound = _bound(sample.labels.get("le"))
        if bound is not None:
            buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def _bound(le: str | None) -> float | None:
    try:
        return float(le) if le is not None else None
    except ValueError:
        return None


def _bucket_increase(pairs: Sequence[tuple[Scrape, Scrape]], labels: Mapping[str, str]) -> Buckets:
    increases = []
    for old, new in pairs:
        before = histogram_buckets(old, LAG_BUCKET, labels)
        after = histogram_buckets(new, LAG_BUCKET, labels)
        restarted = any(after.get(le, 0.0) < count for le, count in before.items())
        increases.append(
            after if restarted else {le: c - before.get(le, 0.0) for le, c in after.items()}
        )
    return _sum_buckets(increases)


def _sum_buckets(many: Iterable[Buckets]) -> Buckets:
    total: Buckets = {}
    for buckets in many:
        for le, count in buckets.items():
            total[le] = total.get(le, 0.0) + count
    return total


def _count(buckets: Buckets) -> float:
    return buckets.get(math.inf, 0.0)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus `histogram_quantile`: linear interpolation inside the bucket holding the
    q-th observation; the highest finite bound when it falls in the `+Inf` bucket."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf or buckets[math.inf] <= 0:
        return None
    rank = q * buckets[math.inf]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank and count > below:
            if bound == math.inf:
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, max(below, count)
    return lower
