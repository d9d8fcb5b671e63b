"""JetStream publish refusals that no retry can change (nats-server `errors.json`).

A stream that refuses a publish answers with a PubAck whose `error` object is
`{"code": 400, "err_code": 10054, "description": "message size exceeds maximum allowed"}`.
Most such errors describe the moment (a leader election, storage trouble, a resource limit)
and a retry of the same message may well be stored. The codes in `PERMANENT_ERR_CODES`
describe the message itself: sending it again, unchanged, to the same stream can never
succeed, so whoever holds it must stop retrying and dead-letter it instead.

Unknown codes are not permanent on purpose: a wrong "permanent" dead-letters an event that a
retry would have delivered, a wrong "transient" only delays it.

Used by the broadcaster (a target's replay stream refusing an event) and the bridge (its own
events stream refusing one).
"""

from __future__ import annotations

__all__ = ["PERMANENT_ERR_CODES", "describe", "is_permanent"]

# JetStream publish errors that a retry of the same message can never turn into a PubAck:
# the message itself is what the stream refuses.
PERMANENT_ERR_CODES = frozenset(
    {
        10054,  # JSStreamMessageExceedsMaximumErr: message size exceeds maximum allowed
        10097,  # JSStreamHeaderExceedsMaximumErr: header size exceeds maximum allowed of 64k
        10165,  # JSMessageTTLInvalidErr: invalid per-message TTL
        10166,  # JSMessageTTLDisabledErr: per-message TTL is disabled
    }
)


def is_permanent(error: object) -> bool:
    """True for the `error` object of a PubAck that no retry of the message can change."""
    if not isinstance(error, dict):
        return False
    return error.get("err_code") in PERMANENT_ERR_CODES


def describe(error: object) -> str:
    """One line for the `error` object of a PubAck: `<description> (err_code <n>)`."""
    if not isinstance(error, dict):
        return str(error)
    return f"{error.get('description', '?')} (err_code {error.get('err_code', '?')})"
