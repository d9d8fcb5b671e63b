"""Fuzzing the event decoder: any header dict and body gives an `Event` or one of the codec's
own errors, never another exception; what decodes re-encodes to the same event; checking
the signature of whatever decodes raises only `SignatureError`."""

from __future__ import annotations

import string
from typing import get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.envelope import (
    HDR_EVENT_ID,
    HDR_HLC,
    HDR_KEY,
    HDR_METHOD,
    HDR_MSG_ID,
    HDR_ORIGIN,
    HDR_PATH,
    HDR_RULE,
    HDR_SCHEMA,
    HDR_SERVICE,
    HDR_SIG,
    HDR_TARGETS,
    HDR_TRACE,
    Event,
    MalformedEventError,
    Reason,
    decode,
    encode,
    new_traceparent,
)
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.signing import SignatureError, Signer, TrustedKey, Verifier

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = [HDR_MSG_ID, HDR_EVENT_ID, HDR_ORIGIN, HDR_SERVICE, HDR_METHOD, HDR_PATH, HDR_HLC,
          HDR_KEY, HDR_RULE, HDR_TRACE, HDR_TARGETS, HDR_SCHEMA, HDR_SIG]  # fmt: skip
REASONS = set(get_args(Reason))
KEY = Ed25519PrivateKey.generate()
SIGNER = Signer("us-east-1", KEY)
VERIFIER = Verifier({"us-east-1": TrustedKey(KEY.public_key(), "us-east", frozenset({"bridge"}))})

any_text = st.text(st.characters(codec="utf-8"), max_size=40)
# Text near what the fields hold, so mutations get past the first check more often.
near_text = st.text(string.ascii_letters + string.digits + "-_/:.%?=&,# \t", max_size=40)
names = st.one_of(
    st.sampled_from(FIELDS).map(lambda n: n.swapcase() if n.startswith("X") else n),
    st.sampled_from(FIELDS),
    st.builds(lambda s: "Xr-" + s, near_text),
    st.builds(lambda s: "Xr-Req-" + s, near_text),
    st.sampled_from(["Xr-Dlq-Reason", "Xr-Canary", "Xr-Replayed-From", "Nats-Stream-Source"]),
    any_text,
)


def valid_headers() -> dict[str, str]:
    event = Event(
        event_id=uuid7_str(), origin="us-east", service="catalog", method="PUT",
        path="/catalog/1?x=1", hlc=HlcStamp(1_700_000_000_000, 0), key="/catalog/1",
        body=b"{}", trace=new_traceparent(), req_headers=(("content-type", "text/plain"),),
        targets=("eu-west",), rule="replace",
    )  # fmt: skip
    return encode(SIGNER.sign(event))[0]


@st.composite
def messages(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """A valid event's headers with some removed, replaced or added; or any dict at all."""
    if draw(st.booleans()):
        return draw(st.dictionaries(names, any_text, max_size=16)), draw(st.binary(max_size=64))
    headers = valid_headers()
    for name in draw(st.lists(st.sampled_from(sorted(headers)), max_size=3)):
        headers.pop(name, None)
    headers.update(draw(st.dictionaries(names, st.one_of(near_text, any_text), max_size=4)))
    return headers, draw(st.binary(max_size=64))


@FUZZ
@given(messages())
def test_decode_gives_an_event_or_its_own_error(message: tuple[dict[str, str], bytes]) -> None:
    event = decoded_or_reason(*message)
    if isinstance(event, str):
        assert event in REASONS
        return
    assert decode(*encode(event)) == event
    try:
        VERIFIER.verify(event)
    except SignatureError:
        pass


def decoded_or_reason(headers: dict[str, str], body: bytes) -> Event | str:
    try:
        return decode(headers, body)
    except MalformedEventError as exc:
        return exc.reason


@FUZZ
@given(st.dictionaries(any_text, any_text, max_size=12), st.binary(max_size=32))
def test_decode_of_any_dict_raises_nothing_foreign(headers: dict[str, str], body: bytes) -> None:
    try:
        decode(headers, body)
    except MalformedEventError:
        pass


def test_the_unmutated_message_decodes_and_verifies() -> None:
    """The base the fuzzer mutates is a valid, signed event (else it would test nothing)."""
    assert VERIFIER.verify(decode(valid_headers(), b"{}")) == "us-east-1"
