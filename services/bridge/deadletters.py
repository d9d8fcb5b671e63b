"""Dead letters of events the region's own events stream can never take (docs/DESIGN.md §5 bridge).

Some events can never be published, however often they are retried: JetStream refuses them
for good (`PublishRefusedError`: over the events stream's `max_msg_size`, headers over 64 KiB,
`shared/pubacks.py`), or, for an outbox entry, the frame is over the server's `max_payload`
(`EventTooLargeError`, after the cluster lowered it). Kept for another attempt, such an event
would never be stored anywhere useful and would hold its outbox back; so it is filed in the
region's own DLQ instead (`shared/dlq.py`, stream `XR_DLQ_<REGION>`):

* subject `xr.dlq.<region>.<region>.<service>`;
* the event's headers and body, unchanged (the body is dropped, and `Xr-Dlq-Body` says so,
  only when the whole letter would exceed `max_payload`);
* `Xr-Dlq-Reason: publish_refused`, `Xr-Dlq-Error` naming the refusal (its err_code and
  description), an empty `Xr-Dlq-Status`, `Xr-Dlq-Attempts: 1`;
* `Nats-Msg-Id: pub:<event id>`, so the same event filed twice (by the live path and then by
  the outbox drainer, or again after a crash) is stored once within the DLQ's duplicate window.

`xregion dlq replay` sends such a letter back to the events stream, as a valid event again,
once the operator has raised the limit that refused it.

If the DLQ refuses the letter itself for good (its own `max_msg_size` lower, say), a slim
letter is filed instead: only the headers that name the event (id, origin, service, method,
path, key, HLC, trace) and the `Xr-Dlq-*` ones, no body, `Xr-Dlq-Body` saying what was left
out and why. It cannot be replayed, but the write is on record. If even that is refused, there
is nowhere left to keep the event: `DeadLetterRefusedError`, and the caller drops it with an
error line naming it rather than retrying it for ever.

`file()` returns once the DLQ stream acked a letter, or raises `DeadLetterError`: the letter
may not be stored, and the caller keeps the event (in the outbox) to try again.

Errors::

    Exception
     └── DeadLetterError          the dead letter was not acked by the DLQ stream in time
          └── DeadLetterRefusedError  the DLQ refuses even the slim letter, for good
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from services.bridge.publisher import EventPublisher, PublishError, PublishRefusedError
from shared.dlq import PUBLISH_REFUSED, DeadLetter, dead_letter, fit, slim
from shared.envelope import EventTooLargeError

__all__ = ["DeadLetterError", "DeadLetterRefusedError", "DeadLetters"]


class DeadLetterError(Exception):
    """The dead letter was not stored (as far as the bridge knows): keep the event."""


class DeadLetterRefusedError(DeadLetterError):
    """The DLQ refuses even the slim letter for good: no retry can store the event."""


class DeadLetters:
    """Files events refused for good in the region's DLQ; see the module docstring."""

    def __init__(
        self,
        publisher: EventPublisher,
        *,
        region: str,
        max_payload: Callable[[], int],
        timeout_s: float,
    ) -> None:
        self._publisher = publisher
        self._region = region
        self._max_payload = max_payload
        self._timeout_s = timeout_s

    async def file(
        self,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        *,
        event_id: str,
        error: str,
    ) -> None:
        """Publish the dead letter of the event published as (`subject`, `headers`,
        `payload`), refused for good with `error`, and await the DLQ's ack."""
        letter = dead_letter(
            region=self._region,
            subject=subject,
            headers=headers,
            payload=payload,
            reason=PUBLISH_REFUSED,
            status=None,
            attempts=1,
            error=error,
            now=dt.datetime.now(dt.UTC),
            msg_id=f"pub:{event_id}",
        )
        letter = fit(letter, self._max_payload())
        try:
            await self._send(letter)
        except PublishRefusedError as refused:
            try:
                await self._send(slim(letter, str(refused)))
            except PublishRefusedError as exc:
                raise DeadLetterRefusedError(
                    f"{letter[0]} refuses even a letter without body: {exc}"
                ) from exc

    async def _send(self, letter: DeadLetter) -> None:
        """Publish `letter`; PublishRefusedError passes, any other failure is DeadLetterError."""
        to, headers, body = letter
        try:
            await self._publisher.publish(to, headers, body, timeout_s=self._timeout_s)
        except PublishRefusedError:
            raise
        except (PublishError, EventTooLargeError) as exc:
            raise DeadLetterError(f"dead letter not stored in {to}: {exc}") from exc
