"""Finding every running xregion process through the NATS services API (docs/DESIGN.md §8).

Each process registers with `nats.micro` as `xr-bridge`, `xr-broadcaster` or `xr-replayer`,
its region (and admin URL) in the metadata. `$SRV.PING|INFO|STATS` are plain subscriptions in
every instance, and requests cross gateways, so one connection to any region reaches every
instance of the super-cluster. A plain request returns the first reply only, so `collect`
publishes with a private inbox and keeps every reply until the timeout; `join` (pure) merges
the three answers of each instance by its id.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = [
    "SERVICE_NAMES",
    "Instance",
    "collect",
    "discover",
    "join",
    "parse_started",
]

SERVICE_NAMES = ("xr-bridge", "xr-broadcaster", "xr-replayer")
_VERBS = ("PING", "INFO", "STATS")


@dataclass(frozen=True, slots=True)
class Instance:
    """One running process, as the services API describes it."""

    id: str
    name: str  # xr-bridge | xr-broadcaster | xr-replayer
    version: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    started: datetime | None = None  # UTC, from STATS
    description: str | None = None  # from INFO

    @property
    def region(self) -> str:
        return self.metadata.get("region", "?")

    @property
    def service(self) -> str:
        return self.name.removeprefix("xr-")

    @property
    def admin_url(self) -> str | None:
        return self.metadata.get("admin_url") or None

    def uptime_s(self, now: datetime) -> float | None:
        return None if self.started is None else max(0.0, (now - self.started).total_seconds())


async def collect(nc: Client, subject: str, timeout_s: float) -> list[dict[str, Any]]:
    """Every JSON object answered to `subject` within `timeout_s` (not only the first)."""
    replies: list[dict[str, Any]] = []

    async def keep(msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
        except ValueError:
            return  # not a services API answer: someone else's responder
        if isinstance(body, dict):
            replies.append(body)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=keep)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(timeout_s)  # the collection window: replies arrive meanwhile
    finally:
        await sub.unsubscribe()
    return replies


async def discover(nc: Client, timeout_s: float) -> list[Instance]:
    """Every xregion instance that answers PING, INFO or STATS within `timeout_s`."""
    ping, info, stats = await asyncio.gather(
        *(collect(nc, f"$SRV.{verb}", timeout_s) for verb in _VERBS)
    )
    return join(ping, info, stats)


def join(
    pings: Iterable[Mapping[str, Any]],
    infos: Iterable[Mapping[str, Any]],
    stats: Iterable[Mapping[str, Any]],
    names: Iterable[str] = SERVICE_NAMES,
) -> list[Instance]:
    """The instances of the services `names`, one per id, sorted by region, service, id."""
    wanted = set(names)
    merged: dict[str, dict[str, Any]] = {}
    for reply in (*pings, *infos, *stats):
        if reply.get("name") not in wanted or not isinstance(reply.get("id"), str):
            continue
        entry = merged.setdefault(reply["id"], {})
        for key, value in reply.items():
            if value not in (None, "", {}, []):
                entry.setdefault(key, value)
    instances = [_instance(entry) for entry in merged.values()]
    return sorted(instances, key=lambda i: (i.region, i.name, i.id))


def _instance(entry: Mapping[str, Any]) -> Instance:
    metadata = entry.get("metadata")
    return Instance(
        id=entry["id"],
        name=entry["name"],
        version=str(entry.get("version", "?")),
        metadata={str(k): str(v) for k, v in metadata.items()}
        if isinstance(metadata, Mapping)
        else {},
        started=parse_started(entry.get("started")),
        description=entry.get("description"),
    )


def parse_started(value: Any) -> datetime | None:
    """STATS `started` (RFC 3339, UTC, e.g. `2026-08-01T10:00:00.123Z`) as an aware datetime."""
    if not isinstance(value, str):
        return None
    try:
        started = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return started if started.tzinfo else started.replace(tzinfo=UTC)
