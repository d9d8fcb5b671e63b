"""Which target regions an event owes. Pure (no IO) but for `RouteCache`, which reads the
trusted keys through `verify.py`.

`Policy.route(subject, headers, payload)` reads one stored message and returns a `Route`:
the set of target regions that must receive it, plus what the forwarder needs to order and
label it. The rules, in order:

1. **Never back to the origin** (nor to this region, which is the origin of everything in its
   events stream), and never outside the configured `regions`.
2. **Canaries** (a message carrying `Xr-Canary: <target>`) go to that one target only.
3. **Known service**: `targets = "all"` means every peer region, a list means those regions.
   A request's `Xr-Targets` narrows that set, and only when the service has
   `allow_request_targets = true`; otherwise the header is ignored. It never widens it.
4. **Unknown service** (a service this region's configuration does not list, e.g. the bridge
   runs a newer region file than the broadcaster): every peer region, narrowed by
   `Xr-Targets` if present. Service names are region-agnostic, so the target's replayer is
   the one that knows whether it serves that service; if it does not, it dead-letters the
   event (visible, replayable). Holding the event instead would stall the consumer once
   `max_ack_pending` such events pile up; dropping it would lose a write silently.
5. **Malformed event** (the codec rejects it): forwarded unchanged to every peer region, so
   that the target's replayer dead-letters it with the reason instead of it vanishing here.

The route is read from the routing headers alone when they are there in the bridge's
spelling and valid (`Xr-Schema`, `Xr-Event-Id` = `Nats-Msg-Id`, `Xr-Origin`, `Xr-Service`,
`Xr-Key`, `Xr-Trace`, a valid `Xr-Targets`, no other `Xr-` header but the known ones);
anything else takes the full decode, which decides rule 5. So the broadcaster checks what
routing needs; the rest of an event (HLC, method, path, signature, body) is checked by the
target's replayer, which verifies every event anyway and dead-letters what is off (a full
decode per event would cost the broadcaster more than the rest of its per-event work). With
signing on, `RouteCache` decodes and verifies each event once all the same (`verify.py`).

`Route.lane` = (service, Xr-Key) names the key an event writes (the replayer orders by it;
the forwarder does not serialise per key: docs/DESIGN.md "Broadcaster data path").

`RouteCache` lets the forwarders of every target share one `route()` per stored message
(decoding and validating an event is the biggest part of the broadcaster's own per-event
work), and, with signing on, one verification (`verify.py`): the forwarder dead-letters an
event whose signature does not verify instead of forwarding it.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.broadcaster.verify import EventCheck
from shared.envelope import (
    HDR_CANARY,
    HDR_EVENT_ID,
    HDR_HLC,
    HDR_KEY,
    HDR_METHOD,
    HDR_MSG_ID,
    HDR_ORIGIN,
    HDR_PATH,
    HDR_REQ_PREFIX,
    HDR_RULE,
    HDR_SCHEMA,
    HDR_SERVICE,
    HDR_SIG,
    HDR_TARGETS,
    HDR_TRACE,
    SCHEMA_VERSION,
    MalformedEventError,
    canary_target,
    decode,
    parse_targets,
)
from shared.regions import REGION_RE, SERVICE_RE
from shared.settings import ServiceSettings, Settings, SigningSettings

__all__ = ["Lane", "Policy", "Route", "RouteCache", "ServicePolicy", "about"]

# (service, key): the key an event writes.
Lane = tuple[str, str]

# Header names as the bridge writes them: any other `Xr-` name takes the full decode.
_EXACT_NAMES = frozenset(
    {HDR_MSG_ID, HDR_EVENT_ID, HDR_ORIGIN, HDR_SERVICE, HDR_METHOD, HDR_PATH, HDR_HLC, HDR_KEY}
    | {HDR_RULE, HDR_TRACE, HDR_TARGETS, HDR_SCHEMA, HDR_SIG, HDR_CANARY}
)
_SCHEMA = str(SCHEMA_VERSION)
_TRACE_LEN = 55  # 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """The replication policy of one service: `targets` None means every region."""

    targets: frozenset[str] | None
    allow_request_targets: bool

    @classmethod
    def from_settings(cls, service: ServiceSettings) -> ServicePolicy:
        targets = None if service.targets == "all" else frozenset(service.targets)
        return cls(targets=targets, allow_request_targets=service.allow_request_targets)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one stored message goes, and how the forwarder labels and orders it."""

    origin: str
    service: str
    lane: Lane
    targets: frozenset[str]
    event_id: str | None
    kind: str  # "event" | "canary" | "malformed"
    trace_id: str | None = None
    known_service: bool = True
    problem: str | None = None  # why a malformed message did not decode
    unverified: str | None = None  # why its signature does not verify (`verify.py`)


@dataclass(frozen=True, slots=True)
class Policy:
    """The policy of one region; build it once from the settings."""

    region: str
    peers: frozenset[str]
    services: Mapping[str, ServicePolicy]
    # Where the trusted keys are, for `RouteCache` to verify events (None: not verified).
    signing: SigningSettings | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        services = {name: ServicePolicy.from_settings(s) for name, s in settings.services.items()}
        policy = cls.build(settings.region, settings.regions, services)
        return dataclasses.replace(policy, signing=settings.signing)

    @classmethod
    def build(
        cls, region: str, regions: Iterable[str], services: Mapping[str, ServicePolicy]
    ) -> Policy:
        return cls(region, frozenset(regions) - {region}, dict(services))

    def targets(
        self,
        *,
        service: str,
        origin: str,
        requested: Iterable[str] | None = None,
        canary: str | None = None,
    ) -> frozenset[str]:
        """The target regions an event of `service` from `origin` owes (rules 1-4)."""
        possible = self.peers - {origin}
        if canary is not None:
            return possible & {canary}
        policy = self.services.get(service)
        if policy is not None:
            if policy.targets is not None:
                possible &= policy.targets
            if not policy.allow_request_targets:
                requested = None
        if requested is not None:
            possible &= frozenset(requested)
        return possible

    def route(self, subject: str, headers: Mapping[str, str] | None, payload: bytes) -> Route:
        """The route of one message of the events stream (`xr.events.<origin>.<service>`)."""
        if headers:
            fast = self._from_headers(headers)
            if fast is not None:
                return fast
        return self._decoded(subject, headers, payload)

    def _from_headers(self, headers: Mapping[str, str]) -> Route | None:
        """The route read from the routing headers alone (module docstring), or None."""
        if headers.get(HDR_SCHEMA) != _SCHEMA or not _only_known_names(headers):
            return None
        event_id, origin = headers.get(HDR_EVENT_ID), headers.get(HDR_ORIGIN)
        service, key = headers.get(HDR_SERVICE), headers.get(HDR_KEY)
        trace = headers.get(HDR_TRACE)
        if event_id is None or origin is None or service is None or key is None:
            return None
        if trace is None or len(trace) != _TRACE_LEN or headers.get(HDR_MSG_ID) != event_id:
            return None
        if not (REGION_RE.fullmatch(origin) and SERVICE_RE.fullmatch(service)):
            return None
        requested = headers.get(HDR_TARGETS)
        try:
            wanted = None if requested is None else parse_targets(requested)
        except MalformedEventError:
            return None
        canary = headers.get(HDR_CANARY)
        canary = None if canary is None else canary.strip()
        return Route(
            origin=origin,
            service=service,
            lane=(service, key),
            targets=self.targets(service=service, origin=origin, requested=wanted, canary=canary),
            event_id=event_id,
            kind="event" if canary is None else "canary",
            trace_id=trace[3:35],
            known_service=canary is not None or service in self.services,
        )

    def _decoded(self, subject: str, headers: Mapping[str, str] | None, payload: bytes) -> Route:
        canary = canary_target(headers)
        try:
            event = decode(headers, payload)
        except MalformedEventError as exc:
            return self._malformed(subject, str(exc))
        targets = self.targets(
            service=event.service, origin=event.origin, requested=event.targets, canary=canary
        )
        return Route(
            origin=event.origin,
            service=event.service,
            lane=(event.service, event.key),
            targets=targets,
            event_id=event.event_id,
            kind="event" if canary is None else "canary",
            trace_id=event.trace_id,
            known_service=canary is not None or event.service in self.services,
        )

    def _malformed(self, subject: str, problem: str) -> Route:
        origin, service = _subject_parts(subject, default_origin=self.region)
        return Route(
            origin=origin,
            service=service,
            lane=(service, ""),
            targets=self.peers - {origin},
            event_id=None,
            kind="malformed",
            known_service=service in self.services,
            problem=problem,
        )


def _only_known_names(headers: Mapping[str, str]) -> bool:
    """No `Xr-` header but those the bridge writes, in its spelling (else: full decode)."""
    for name in headers:
        if name in _EXACT_NAMES or name.startswith(HDR_REQ_PREFIX):
            continue
        if name[:3].lower() == "xr-":
            return False
    return True


def _subject_parts(subject: str, *, default_origin: str) -> tuple[str, str]:
    """(origin, service) of `xr.events.<origin>.<service>`; odd subjects keep what they can."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[:2] == ["xr", "events"]:
        return parts[2], parts[3]
    return default_origin, "unknown"


@dataclass(slots=True)
class _Cached:
    route: Route
    readers_left: int


class RouteCache:
    """Routes of the events stream's messages by stream sequence, for `readers` forwarders.

    Every forwarder reads the same stored messages, so the first to see sequence N computes
    its route and the others take it from here; an entry goes when every other reader took
    it, or, oldest first, when more than `max_entries` wait (a paused or slower target then
    computes its own). With signing on, a route also says whether the message verifies
    (`verify.py`; loading the trusted keys raises `verify.TrustedKeysError`).
    """

    def __init__(self, policy: Policy, *, readers: int, max_entries: int) -> None:
        self.policy = policy
        self._check = EventCheck.load(policy.signing, sorted(policy.peers | {policy.region}))
        self._readers = readers
        self._max_entries = max_entries
        self._entries: OrderedDict[int, _Cached] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def check(self) -> EventCheck | None:
        """The signature check (None with signing off); `check.reload()` re-reads the keys."""
        return self._check

    def route(
        self, seq: int, subject: str, headers: Mapping[str, str] | None, payload: bytes
    ) -> Route:
        """`Policy.route()` of the message stored at `seq` (with these contents)."""
        cached = self._entries.get(seq)
        if cached is not None:
            cached.readers_left -= 1
            if cached.readers_left <= 0:
                del self._entries[seq]
            return cached.route
        route = self.policy.route(subject, headers, payload)
        if self._check is not None and route.kind != "malformed":
            refusal = self._check.refusal(headers, payload)
            if refusal is not None:
                route = dataclasses.replace(route, unverified=refusal)
        if self._readers > 1:
            self._entries[seq] = _Cached(route, self._readers - 1)
            if len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return route


def about(route: Route) -> dict[str, object]:
    """The fields every log line about an event carries."""
    return {
        "event_id": route.event_id,
        "origin": route.origin,
        "service": route.service,
        "trace_id": route.trace_id,
    }
