"""One delivery → one decision (docs/DESIGN.md §5): `Applier.handle` returns a `Done` (ack) or
raises `Retry` (nak with delay) or `Poison` (dead letter, then ack).

Order of checks: canary (record, never call) → decode → signature → where and when it arrived
(`classify.misplaced`: its replay subject, its targets, its age by HLC) → request (service,
method, path) → version claim by the event's rule (`replace`: the key's record; `apply`: the key's
record, then the event's own marker; stale / duplicate / busy) → the call, with short
in-process retries → classification. The service is called only while this event holds its
claim (the key's, or its marker's).

An outcome after an HTTP answer (a 4xx dead letter, a 5xx/429 retry, `retries_exhausted`,
`too_old`) carries the last answer's status and the excerpt of its body (`answer`), which the
consumer puts into the dead letter's `Xr-Dlq-Error` and the `service_answer` log field.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import nats.errors
from prometheus_client import Histogram

from services.replayer.classify import Verdict, canary_refusal, classify_status, misplaced
from services.replayer.metrics import (
    CANARIES_REFUSED,
    CANARY_AGE,
    CONFLICTS,
    LAG,
    VERSION_RECORD_FAILURES,
)
from services.replayer.outcomes import Done, Poison, Retry
from services.replayer.request import ReplayRequest, RequestError, build_request
from services.replayer.upstream import Answer, Upstream, UpstreamError
from services.replayer.versions import Claim, VersionStore
from services.replayer.versions import Verdict as ClaimVerdict
from shared.envelope import (
    Event,
    MalformedEventError,
    canary_target,
    decode,
)
from shared.logs import get_logger
from shared.settings import ReplayerSettings, ServiceSettings
from shared.signing import SignatureError, Signer, Verifier

__all__ = ["Applier", "Delivery"]

_ABSENT = frozenset({404, 410})

log = get_logger("xr.replayer")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the applier needs from a NATS message."""

    subject: str
    headers: Mapping[str, str] | None
    data: bytes
    num_delivered: int
    stream_seq: int
    stored_at: dt.datetime


class Applier:
    """Decides one delivery; see the module docstring."""

    def __init__(
        self,
        settings: ReplayerSettings,
        services: Mapping[str, ServiceSettings],
        *,
        region: str,
        versions: VersionStore,
        upstream: Upstream,
        verifier: Verifier | None = None,
        signer: Signer | None = None,
        clock: Callable[[], float] = time.time,
        max_event_age_s: float | None = None,
    ) -> None:
        self._settings = settings
        # The service passes the effective limit (its default depends on the streams' age).
        self._max_event_age_s = max_event_age_s or settings.max_event_age_s
        self._services = services
        self._region = region
        self._versions = versions
        self._upstream = upstream
        self._verifier = verifier
        self._signer = signer
        self._clock = clock
        self._canaries: dict[str, float] = {}
        self._lags: dict[str, Histogram] = {}

    async def handle(self, delivery: Delivery) -> Done:
        """The ack label; raises Retry or Poison."""
        if canary_target(delivery.headers) is not None:
            self._canary(delivery)
            return Done.CANARY
        event = self._decode(delivery)
        request = self._request(event)
        applies = event.effective_rule == "apply"
        claims = self._versions.claim_apply if applies else self._versions.claim
        result = await claims(event)
        if result.verdict is ClaimVerdict.STALE:
            return Done.STALE
        if result.verdict is ClaimVerdict.DUPLICATE:
            return Done.DUPLICATE
        if result.claim is None:  # BUSY: another event of this key is being applied
            self._check_age(event, delivery, "key claimed by another event")
            raise Retry(self._settings.claim_busy_delay_s, "key_busy")
        done = await self._call(event, delivery, request, result.claim, repeat=result.repeat)
        if applies and event.method != "POST" and done is not Done.STALE:
            await self._apply_mark(event)
        return done

    def _decode(self, delivery: Delivery) -> Event:
        try:
            event = decode(delivery.headers, delivery.data)
        except MalformedEventError as exc:
            raise Poison("malformed", str(exc)) from exc
        if self._verifier is not None:
            try:
                self._verifier.verify(event)
            except SignatureError as exc:
                raise Poison("bad_signature", f"{exc.reason}: {exc}") from exc
        refused = misplaced(
            event, subject=delivery.subject, region=self._region, now_s=self._clock(),
            max_age_s=self._max_event_age_s, max_ahead_s=self._settings.max_event_ahead_s,
        )  # fmt: skip
        if refused is not None:
            raise Poison(*refused)
        return event

    def _request(self, event: Event) -> ReplayRequest:
        # A marker lives no longer than the claim its call runs under.
        expires_at = math.ceil(self._clock() + self._settings.ack_wait_s)
        try:
            return build_request(
                event, self._services, signer=self._signer, marker_expires_at=expires_at
            )
        except RequestError as exc:
            raise Poison(exc.reason, str(exc)) from exc

    async def _call(
        self,
        event: Event,
        delivery: Delivery,
        request: ReplayRequest,
        claim: Claim,
        *,
        repeat: bool = False,
    ) -> Done:
        try:
            answer = await self._upstream.call(request, event.service)
        except UpstreamError as exc:
            await claim.release()
            raise self._retry_or_poison(event, delivery, str(exc)) from exc
        verdict = classify_status(answer.status)
        if repeat and _settles_repeat(answer.status):
            verdict = Verdict.APPLIED  # what the earlier call did is already there
        elif verdict is Verdict.POISON and answer.status in _ABSENT:
            verdict = self._absent(event)
        if verdict is Verdict.RETRY:
            await claim.release()
            raise self._retry_or_poison(event, delivery, _answered(answer), answer)
        if verdict is Verdict.POISON:
            await claim.release()
            raise Poison(f"http_{answer.status}", _answered(answer), answer.status, answer.excerpt)
        await self._mark_applied(event, claim)
        self._lag(event.origin).observe(max(0.0, self._clock() - event.hlc.wall_time_s))
        if repeat:
            log.warning("replayer.repeated_call", status=answer.status)
            return Done.REPEATED
        return Done.APPLIED if verdict is Verdict.APPLIED else Done.STALE

    async def _apply_mark(self, event: Event) -> None:
        """Count an `apply` event applied after a newer one of its key as a conflict (the
        call has happened: a failure to record is logged, never a retry)."""
        try:
            in_order = await self._versions.raise_apply_mark(event)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("replayer.apply_mark_failed", event_id=event.event_id, error=repr(exc))
            return
        if not in_order:
            CONFLICTS.labels(event.origin, event.service, "out_of_order").inc()
            log.info("replayer.conflict", kind="out_of_order", key=event.key)

    async def _mark_applied(self, event: Event, claim: Claim) -> None:
        """Record the applied version. The call has happened: if the record cannot be
        written, the event is still acked (a nak would call the service a second time). The
        claim then stays until it expires: newer events of the key wait for it, older ones
        are still stale."""
        try:
            await claim.applied()
        except (TimeoutError, nats.errors.Error) as exc:
            VERSION_RECORD_FAILURES.inc()
            log.warning("replayer.version_record_failed", event_id=event.event_id, error=repr(exc))

    def _lag(self, origin: str) -> Histogram:
        child = self._lags.get(origin)
        if child is None:
            child = self._lags[origin] = LAG.labels(origin)
        return child

    def _absent(self, event: Event) -> Verdict:
        """A 404 or 410: the resource is not here. A delete has what it asked for (and, as a
        `replace`, its version makes older creates of its key stale). Another change may have
        overtaken its create from another region: retried for `absent_retry_s`."""
        if event.method == "DELETE":
            return Verdict.APPLIED
        if event.effective_rule == "apply" and event.method != "POST":
            age_s = self._clock() - event.hlc.wall_time_s
            if age_s < self._settings.absent_retry_s:
                return Verdict.RETRY
        return Verdict.POISON

    def _retry_or_poison(
        self, event: Event, delivery: Delivery, error: str, answer: Answer | None = None
    ) -> Retry | Poison:
        """`answer`: the last HTTP answer, None after a transport failure."""
        status, said = (None, "") if answer is None else (answer.status, answer.excerpt)
        if delivery.num_delivered >= self._settings.max_deliveries:
            return Poison("retries_exhausted", error, status, said)
        self._check_age(event, delivery, error, status, said)
        s = self._settings
        delay = min(s.nak_max_s, s.nak_base_s * 2 ** min(delivery.num_delivered - 1, 30))
        return Retry(delay, error, status, said)

    def _check_age(
        self,
        event: Event,
        delivery: Delivery,
        error: str,
        status: int | None = None,
        said: str = "",
    ) -> None:
        age_s = self._clock() - delivery.stored_at.timestamp()
        if age_s > self._settings.max_age_s:
            raise Poison("too_old", f"{error} (queued {age_s:.0f} s)", status, said)

    def _canary(self, delivery: Delivery) -> None:
        """Record a canary only once it is shown to be this region's, from its origin (signed,
        with signing on), its time capped at now: a forged one must not make a stalled path
        look healthy. Never a call nor a dead letter."""
        try:
            event = decode(delivery.headers, delivery.data)
            if self._verifier is not None:
                self._verifier.verify(event)
        except MalformedEventError:
            self._refuse_canary("malformed")
            return
        except SignatureError as exc:
            self._refuse_canary(exc.reason)
            return
        why = canary_refusal(
            event, target=canary_target(delivery.headers), subject=delivery.subject,
            region=self._region,
        )  # fmt: skip
        if why is not None:
            self._refuse_canary(why)
            return
        origin = event.origin
        if origin not in self._canaries:
            # Computed when scraped: the age a dashboard shows is the age at that moment.
            CANARY_AGE.labels(origin, self._region).set_function(
                lambda: max(0.0, self._clock() - self._canaries[origin])
            )
        newest = min(event.hlc.wall_time_s, self._clock())
        self._canaries[origin] = max(self._canaries.get(origin, 0.0), newest)

    def _refuse_canary(self, reason: str) -> None:
        CANARIES_REFUSED.labels(reason).inc()
        log.warning("replayer.canary_refused", reason=reason)


def _settles_repeat(status: int) -> bool:
    """A repeated call refused because its first call landed: a create that exists (409,
    412) is the effect the event wanted (a delete of what is gone is always done: `_absent`)."""
    return status in (409, 412)


def _answered(answer: Answer) -> str:
    return f"the service answered {answer.status}"
