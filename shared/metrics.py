"""Prometheus metrics shared by every service (docs/DESIGN.md §8).

The Prometheus registry is one of the two process-wide things (with logging): metrics are
declared at import time against `REGISTRY`, and the admin server exposes that registry.
Service-specific metrics live in their service's package; the ones here concern the parts all
services share: the NATS connection, retries and the build.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Info

__all__ = [
    "BUILD_INFO",
    "NATS_CONNECTED",
    "NATS_DISCONNECTS",
    "NATS_ERRORS",
    "NATS_RECONNECTS",
    "REGISTRY",
    "RETRIES",
    "XREGION_VERSION",
    "CollectorRegistry",
]

try:
    XREGION_VERSION = version("xregion")
except PackageNotFoundError:  # running from a source tree that was never installed
    XREGION_VERSION = "0.0.0"

BUILD_INFO = Info("xr_build", "xregion build and the service this process runs")

NATS_CONNECTED = Gauge(
    "xr_nats_connected", "1 while the NATS connection is up, else 0", ["service"]
)
NATS_DISCONNECTS = Counter(
    "xr_nats_disconnects_total", "Times the NATS connection was lost", ["service"]
)
NATS_RECONNECTS = Counter(
    "xr_nats_reconnects_total", "Times the NATS connection was re-established", ["service"]
)
NATS_ERRORS = Counter(
    "xr_nats_errors_total", "Errors reported by the NATS client, by type", ["service", "error"]
)
RETRIES = Counter(
    "xr_retries_total",
    "Retries scheduled (shared/retry.py), by the component that retries and why",
    ["component", "reason"],
)
