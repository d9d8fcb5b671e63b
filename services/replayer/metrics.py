"""The replayer's Prometheus metrics (docs/DESIGN.md §8 names; process registry)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CANARIES_REFUSED",
    "CANARY_AGE",
    "CONFLICTS",
    "DLQ_MESSAGES",
    "EVENTS",
    "INFLIGHT",
    "LAG",
    "REPLAY_BACKLOG",
    "UPSTREAM_DURATION",
    "UPSTREAM_RETRIES",
    "VERSION_RECORD_FAILURES",
    "preset",
]

OUTCOMES = ("applied", "stale", "duplicate", "repeated", "retried", "dead_lettered")

EVENTS = Counter(
    "xr_replayer_events_total",
    "Events handled, by outcome (applied|stale|duplicate|repeated|retried|dead_lettered)",
    ["origin", "service", "outcome"],
)
LAG = Histogram(
    "xr_replayer_lag_seconds",
    "From the event's HLC wall time to the service's response",
    ["origin"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
UPSTREAM_DURATION = Histogram(
    "xr_replayer_upstream_duration_seconds",
    "Duration of one call to a local service",
    ["service"],
)
CONFLICTS = Counter(
    "xr_replayer_conflicts_total",
    "Events applied although their key had seen a newer write (nothing skipped), by kind: "
    "out_of_order (an apply event older than the newest apply event applied to its key)",
    ["origin", "service", "kind"],
)
UPSTREAM_RETRIES = Counter(
    "xr_replayer_upstream_retries_total",
    "In-process retries scheduled for calls to a local service",
    ["service"],
)
REPLAY_BACKLOG = Gauge(
    "xr_replayer_backlog", "Events in the replay stream not yet delivered to the replayer"
)
INFLIGHT = Gauge("xr_replayer_inflight", "Events this process holds (applying or queued by key)")
DLQ_MESSAGES = Gauge("xr_dlq_messages", "Messages in this region's dead-letter stream")
CANARY_AGE = Gauge(
    "xr_replication_canary_age_seconds",
    "Age of the newest canary from each origin applied in this region",
    ["origin", "target"],
)
CANARIES_REFUSED = Counter(
    "xr_replayer_canaries_refused_total",
    "Canaries not recorded, by reason: malformed, unsigned|unknown_key|wrong_region|"
    "bad_signature, other_target, not_a_canary, subject_mismatch",
    ["reason"],
)
VERSION_RECORD_FAILURES = Counter(
    "xr_replayer_version_record_failures_total",
    "Applied events whose version record could not be written (acked anyway: the service "
    "has the write; the key's claim expires on its own)",
)


def preset(origins: Iterable[str], services: Iterable[str]) -> None:
    """Create every known counter series at zero: a series that first appears at 1 hides
    that first event from `rate()` and `increase()`, so dashboards and alerts would miss it."""
    origins = tuple(origins)
    for service in services:
        UPSTREAM_RETRIES.labels(service)
        for origin in origins:
            CONFLICTS.labels(origin, service, "out_of_order")
            for outcome in OUTCOMES:
                EVENTS.labels(origin, service, outcome)
