"""The broadcaster's Prometheus metrics. The first three names are contracts (DESIGN §8)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["BACKLOG", "CANARIES", "FORWARDED", "HELD", "LAG", "PAUSED", "UNREACHABLE"]

FORWARDED = Counter(
    "xr_broadcaster_forwarded_total",
    "Events handled per path, by outcome: forwarded (stored in the target stream), duplicate "
    "(the target had it already), canary, malformed (forwarded undecoded, the target's "
    "replayer dead-letters it), skipped (the target does not need it), retried (one failed "
    "publish attempt that will be retried), dead_lettered (the target refused it for good: "
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
