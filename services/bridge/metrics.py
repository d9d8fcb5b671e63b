"""The bridge's Prometheus metrics (names are contracts: docs/DESIGN.md §8)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BUFFERED_BODY_BYTES",
    "EVENTS",
    "INFLIGHT_REQUESTS",
    "OUTBOX_DEPTH",
    "OUTBOX_DRAINED",
    "OUTBOX_UNREADABLE",
    "PUBLISH_DURATION",
    "REFUSED",
    "REPLAY_MARKERS_REFUSED",
    "REQUESTS",
    "REQUEST_DURATION",
    "VERSION_RECORDS",
    "method_label",
]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter(
    "xr_bridge_requests_total",
    "HTTP requests answered by the bridge, by service (or 'none'), method and status code",
    ["service", "method", "code"],
)
REQUEST_DURATION = Histogram(
    "xr_bridge_request_duration_seconds",
    "Time from a request's arrival to the start of its response (the added part included)",
    ["service"],
    buckets=_BUCKETS,
)
EVENTS = Counter(
    "xr_bridge_events_total",
    "Replicated writes by what happened to their event: published, spooled (outbox), failed",
    ["service", "outcome"],
)
PUBLISH_DURATION = Histogram(
    "xr_bridge_publish_duration_seconds",
    "Time from publishing an event to its JetStream ack (or to giving up on the ack)",
    buckets=_BUCKETS,
)
OUTBOX_DEPTH = Gauge("xr_bridge_outbox_depth", "Events waiting in the local outbox")
OUTBOX_UNREADABLE = Counter(
    "xr_bridge_outbox_unreadable",
    "Outbox entries that no longer read back, moved to the outbox_unreadable table",
)
OUTBOX_DRAINED = Counter(
    "xr_bridge_outbox_drained_total", "Outbox events republished and acked by JetStream"
)
INFLIGHT_REQUESTS = Gauge("xr_bridge_inflight_requests", "Requests being handled right now")
BUFFERED_BODY_BYTES = Gauge(
    "xr_bridge_buffered_body_bytes",
    "Request body bytes held in memory right now, of bridge.max_buffered_body_bytes; a "
    "request beyond it is answered 503 (xr_bridge_refused_total{error=body_budget_exhausted})",
)
REFUSED = Counter(
    "xr_bridge_refused_total",
    "Requests the bridge answered itself with an error instead of the service's answer, by "
    "service ('none' before routing) and the answer's `error` code",
    ["service", "error"],
)
REPLAY_MARKERS_REFUSED = Counter(
    "xr_bridge_replay_markers_refused_total",
    "Requests refused (400) for carrying a replay marker this bridge cannot trust, by reason: "
    "signing_off, unsigned, unknown_key, wrong_region, bad_signature, expired",
    ["reason"],
)
VERSION_RECORDS = Counter(
    "xr_bridge_version_records_total",
    "Local writes recorded in the region's version bucket, by what happened: recorded, "
    "superseded (the record already held a newer version), failed (an attempt failed: KV "
    "unavailable or contended; tried again later), given_up (no attempt left)",
    ["service", "outcome"],
)


def method_label(method: str) -> str:
    """Methods as a bounded label set: the usual ones, everything else as OTHER."""
    return method if method in _METHODS else "OTHER"
