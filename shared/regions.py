"""Region names and the NATS names derived from them (docs/DESIGN.md §3).

Pure functions: every subject, stream and consumer name the product uses is spelled here and
nowhere else, so a rename is one edit.
"""

from __future__ import annotations

import re

__all__ = [
    "REGION_RE",
    "SERVICE_RE",
    "InvalidNameError",
    "broadcast_consumer",
    "dlq_stream",
    "dlq_subject",
    "events_stream",
    "events_subject",
    "key_belongs_to",
    "replay_consumer",
    "replay_stream",
    "replay_subject",
    "stream_token",
    "validate_region",
    "validate_service",
]

REGION_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")
# Service names become one subject token, so the same alphabet keeps them safe there.
SERVICE_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")


class InvalidNameError(ValueError):
    """A region or service name that cannot be used in subjects and stream names."""


def validate_region(name: str) -> str:
    """Return `name` if it is a valid region name, else raise InvalidNameError."""
    if not REGION_RE.fullmatch(name):
        raise InvalidNameError(f"invalid region name {name!r}: must match [a-z][a-z0-9-]{{0,30}}")
    return name


def validate_service(name: str) -> str:
    """Return `name` if it is a valid service name, else raise InvalidNameError."""
    if not SERVICE_RE.fullmatch(name):
        raise InvalidNameError(f"invalid service name {name!r}: must match [a-z][a-z0-9_-]{{0,62}}")
    return name


def stream_token(region: str) -> str:
    """`us-east` -> `US_EAST`: the form regions take inside stream names."""
    return validate_region(region).upper().replace("-", "_")


def events_stream(region: str) -> str:
    return f"XR_EVENTS_{stream_token(region)}"


def replay_stream(region: str) -> str:
    return f"XR_REPLAY_{stream_token(region)}"


def dlq_stream(region: str) -> str:
    return f"XR_DLQ_{stream_token(region)}"


def events_subject(origin: str, service: str = "*") -> str:
    """`xr.events.<origin>.<service>`; the default service is a wildcard for filters."""
    return f"xr.events.{validate_region(origin)}.{service}"


def replay_subject(target: str, origin: str = "*", service: str = "*") -> str:
    """`xr.replay.<target>.<origin>.<service>`."""
    origin_token = origin if origin == "*" else validate_region(origin)
    return f"xr.replay.{validate_region(target)}.{origin_token}.{service}"


def dlq_subject(region: str, origin: str = "*", service: str = "*") -> str:
    """`xr.dlq.<region>.<origin>.<service>`."""
    origin_token = origin if origin == "*" else validate_region(origin)
    return f"xr.dlq.{validate_region(region)}.{origin_token}.{service}"


def broadcast_consumer(target: str) -> str:
    """Durable name of the broadcaster's consumer on the events stream for one target."""
    return f"xr-broadcast-{validate_region(target)}"


def replay_consumer() -> str:
    """Durable name of the replayer's consumer on its region's replay stream."""
    return "xr-replayer"


_KEY_SUFFIX_RE = re.compile(r"[A-Za-z0-9_.]{1,32}")


def key_belongs_to(key_id: str, region: str) -> bool:
    """Signing key ids name their region: `<region>` or `<region>-<suffix>` (no `-` in the
    suffix), e.g. `us-east-1`. A key may only sign for, and vouch for, its own region."""
    if key_id == region:
        return True
    prefix = f"{region}-"
    return key_id.startswith(prefix) and bool(_KEY_SUFFIX_RE.fullmatch(key_id[len(prefix) :]))
