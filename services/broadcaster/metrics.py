"""The broadcaster's Prometheus metrics. The first three names are contracts (dashboards and
alerts use them)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

__all__ = [
    "BACKLOG",
    "CANARIES",
    "FORWARDED",
    "HELD",
    "LAG",
    "PAUSED",
    "UNREACHABLE",
    "PathCounters",
]

FORWARDED = Counter(
    "xr_broadcaster_forwarded_total",
    "Events handled per path, by outcome: forwarded (stored in the target stream), duplicate "
    "(the target had it already), canary, malformed (forwarded undecoded, the target's "
    "replayer dead-letters it), skipped (the target does not need it), retried (a publish "
    "that will be sent again: it failed, or was in flight when another one failed), "
    "dead_lettered (the target refused it for good: "
    "filed in this region's DLQ with reason forward_refused), dropped (refused for good by the "
    "target and by this region's DLQ, even without its body: acked, logged as "
    "broadcaster.dropped)",
    ["origin", "target", "outcome"],
)
BACKLOG = Gauge(
    "xr_broadcaster_backlog",
    "Events the target still owes: not yet delivered to a broadcaster plus delivered and "
    "not yet acked (consumer info num_pending + num_ack_pending)",
    ["target"],
)
LAG = Gauge(
    "xr_broadcaster_lag_seconds",
    "Age of the oldest event not yet forwarded to the target (0 when none is owed)",
    ["target"],
)
HELD = Gauge(
    "xr_broadcaster_held_events",
    "Events this instance holds for the target: fetched, not yet acked (its window)",
    ["target"],
)
PAUSED = Gauge("xr_broadcaster_paused", "1 while forwarding to the target is paused", ["target"])
UNREACHABLE = Gauge(
    "xr_broadcaster_unreachable",
    "1 while publishes to the target fail and are retried with backoff",
    ["target"],
)
CANARIES = Counter(
    "xr_broadcaster_canaries_total",
    "Canary events written into the region's events stream, by outcome (sent|failed)",
    ["target", "outcome"],
)


class PathCounters:
    """`xr_broadcaster_forwarded_total` of one target, children cached per (origin, outcome)
    (a `labels()` lookup per event costs more than the increment)."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._children: dict[tuple[str, str], Any] = {}

    def inc(self, origin: str, outcome: str, amount: int = 1) -> None:
        child = self._children.get((origin, outcome))
        if child is None:
            child = FORWARDED.labels(origin, self._target, outcome)
            self._children[(origin, outcome)] = child
        child.inc(amount)
