"""What a forwarder holds per event: the source message, what to publish, and how far a
refused event's dead letter got. Pure data."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.msg import Msg

from services.broadcaster.policy import Route
from services.broadcaster.window import Held

__all__ = ["HeldEvent", "Pending"]


@dataclass(slots=True)
class Pending:
    """An event held for the target: the source message and what to publish."""

    msg: Msg
    route: Route
    subject: str
    headers: dict[str, str]
    # `headers` as sent (`shared.frames.header_block`), built once with the frame's size.
    block: bytes | None = None
    # Set once the target refused the event for good (the dead letter's error): from then on
    # the event is dead-lettered instead of forwarded.
    refused: str | None = None
    # Set once the DLQ refused the whole dead letter for good (why): a slim one goes instead.
    slimmed: str | None = None
    # Set once the DLQ refused the slim letter too: the event is given up (acked, logged).
    dropped: str | None = None


HeldEvent = Held[Pending]
