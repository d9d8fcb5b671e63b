"""The event codec: round trips (also through nats-py's own header code), validation, sizes."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable

import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from shared.envelope import (
    HDR_EVENT_ID,
    HDR_HLC,
    HDR_KEY,
    HDR_METHOD,
    HDR_MSG_ID,
    HDR_ORIGIN,
    HDR_PATH,
    HDR_SCHEMA,
    HDR_SERVICE,
    HDR_SIG,
    HDR_TARGETS,
    HDR_TRACE,
    HEADER_BUDGET_BYTES,
    PASSTHROUGH_PREFIXES,
    EnvelopeError,
    Event,
    EventTooLargeError,
    MalformedEventError,
    check_fits,
    decode,
    encode,
    max_body_for,
    new_traceparent,
    parse_targets,
    parse_traceparent,
    req_headers_from,
    signing_input,
)
from shared.frames import header_block, wire_size
from shared.hlc import LOGICAL_MAX, WALL_MS_MAX, HlcStamp
from shared.ids import uuid7_str

EVENT_ID = "0190b6a4-3b4c-7d2e-8f00-123456789abc"
OTHER_EVENT_ID = "0190b6a4-3b4c-7d2e-8f00-123456789abd"
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REQUIRED = [
    HDR_EVENT_ID,
    HDR_ORIGIN,
    HDR_SERVICE,
    HDR_METHOD,
    HDR_PATH,
    HDR_HLC,
    HDR_KEY,
    HDR_TRACE,
    HDR_SCHEMA,
]


def make_event(**changes: object) -> Event:
    event = Event(
        event_id=EVENT_ID,
        origin="us-east",
        service="catalog",
        method="PUT",
        path="/catalog/items/42?expand=1",
        hlc=HlcStamp(1_700_000_000_123, 4),
        key="/catalog/items/42",
        body=b'{"name": "lamp"}',
        trace=TRACE,
        req_headers=(("content-type", "application/json"), ("idempotency-key", "abc-1")),
        targets=("eu-west", "ap-south"),
        sig="us-east-1:c2lnbmF0dXJl",
    )
    return dataclasses.replace(event, **changes)  # type: ignore[arg-type]


def encoded(**changes: object) -> dict[str, str]:
    return encode(make_event(**changes))[0]


# --- strategies for valid events ------------------------------------------------------------

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
# Nothing nats-py would strip or rewrite: no control characters, no surrogates, no spaces at
# the ends (the bridge enforces the same before building an event).
visible = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"))
no_ends = st.text(visible, min_size=1, max_size=30).filter(lambda s: s == s.strip())

regions = st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True)
services = st.from_regex(r"[a-z][a-z0-9_-]{0,62}", fullmatch=True)
methods = st.one_of(
    st.sampled_from(["POST", "PUT", "PATCH", "DELETE"]),
    st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Z]{1,12}", fullmatch=True),
)
paths = st.one_of(
    st.from_regex(r"/[A-Za-z0-9._~%!$&'()*+,;=:@/?-]{0,60}", fullmatch=True),
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
        max_size=30,
    ).map(lambda s: "/" + s),
).filter(lambda p: not p.startswith("//"))
hlcs = st.builds(
    HlcStamp,
    st.integers(min_value=0, max_value=WALL_MS_MAX),
    st.integers(min_value=0, max_value=LOGICAL_MAX),
)
event_ids = st.builds(
    lambda ms, a, b: str(uuid.UUID(int=ms << 80 | 0x7 << 76 | a << 64 | 0b10 << 62 | b)),
    st.integers(min_value=0, max_value=(1 << 48) - 1),
    st.integers(min_value=0, max_value=(1 << 12) - 1),
    st.integers(min_value=0, max_value=(1 << 62) - 1),
)
traces = st.builds(
    lambda t, p, f: f"00-{t:032x}-{p:016x}-{f:02x}",
    st.integers(min_value=1, max_value=(1 << 128) - 1),
    st.integers(min_value=1, max_value=(1 << 64) - 1),
    st.integers(min_value=0, max_value=255),
)
header_values = st.one_of(
    st.just(""),
    no_ends,
    st.builds(lambda a, b: f"{a}\t{b}", no_ends, no_ends),
)
req_headers = st.dictionaries(
    st.text(TOKEN_CHARS, min_size=1, max_size=20), header_values, max_size=5
).map(lambda d: tuple(sorted(d.items())))
targets = st.one_of(st.none(), st.lists(regions, min_size=1, max_size=4, unique=True).map(tuple))
sigs = st.one_of(
    st.none(),
    st.builds(
        lambda k, s: f"{k}:{s}",
        st.from_regex(r"[!-9;-~]{1,16}", fullmatch=True),
        st.from_regex(r"[!-~]{1,88}", fullmatch=True),
    ),
)
events = st.builds(
    Event,
    event_id=event_ids,
    origin=regions,
    service=services,
    method=methods,
    path=paths,
    hlc=hlcs,
    key=no_ends,
    body=st.binary(max_size=256),
    trace=traces,
    req_headers=req_headers,
    targets=targets,
    sig=sigs,
)


# --- nats-py's own serialiser and parser, no socket ------------------------------------------


async def _nats_publish_frame(headers: dict[str, str], payload: bytes) -> bytes:
    nc = Client()
    await nc._send_publish("xr.events.us-east.catalog", "", payload, len(payload), headers)
    frame: bytes = nc._pending[-1]
    return frame


def nats_frame(headers: dict[str, str], payload: bytes) -> tuple[bytes, bytes, int]:
    """(header block, payload, total size) exactly as nats-py 2.16 puts them on the wire."""
    frame = asyncio.run(_nats_publish_frame(headers, payload))
    control, _, rest = frame.partition(b"\r\n")
    hdr_len, total = (int(x) for x in control.split()[-2:])
    return rest[:hdr_len], rest[hdr_len:total], total


async def _nats_parse(block: bytes) -> dict[str, str] | None:
    parsed: dict[str, str] | None = await Client()._process_headers(block)
    return parsed


def nats_received(headers: dict[str, str], payload: bytes) -> tuple[dict[str, str], bytes]:
    """What a subscriber's msg.headers and msg.data would be for this publish."""
    block, body, _ = nats_frame(headers, payload)
    parsed = asyncio.run(_nats_parse(block))
    assert parsed is not None
    return parsed, body


# --- round trips ---------------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(events)
def test_decode_inverts_encode(event: Event) -> None:
    headers, payload = encode(event)
    assert decode(headers, payload) == event


@settings(deadline=None)
@given(events)
def test_round_trip_through_nats_py_header_code(event: Event) -> None:
    assert decode(*nats_received(*encode(event))) == event


@settings(deadline=None)
@given(events, st.data())
def test_decode_accepts_header_names_in_any_case(event: Event, data: st.DataObject) -> None:
    headers, payload = encode(event)
    recase: list[Callable[[str], str]] = [str.lower, str.upper, str.swapcase, str.title]
    mangled = {data.draw(st.sampled_from(recase))(k): v for k, v in headers.items()}
    decoded = decode(mangled, payload)
    assert decoded == event
    assert signing_input(decoded) == signing_input(event)


def test_encode_headers() -> None:
    headers, payload = encode(make_event())
    assert payload == b'{"name": "lamp"}'
    assert headers == {
        "Nats-Msg-Id": EVENT_ID,
        "Xr-Event-Id": EVENT_ID,
        "Xr-Origin": "us-east",
        "Xr-Service": "catalog",
        "Xr-Method": "PUT",
        "Xr-Path": "/catalog/items/42?expand=1",
        "Xr-Hlc": "001700000000123-000004",
        "Xr-Key": "/catalog/items/42",
        "Xr-Req-Content-Type": "application/json",
        "Xr-Req-Idempotency-Key": "abc-1",
        "Xr-Trace": TRACE,
        "Xr-Targets": "eu-west,ap-south",
        "Xr-Schema": "1",
        "Xr-Sig": "us-east-1:c2lnbmF0dXJl",
    }


def test_optional_headers_are_left_out_when_unset() -> None:
    headers = encoded(targets=None, sig=None, req_headers=())
    assert HDR_TARGETS not in headers
    assert HDR_SIG not in headers
    assert not [k for k in headers if k.startswith("Xr-Req-")]
    assert decode(headers, b"") == make_event(targets=None, sig=None, req_headers=(), body=b"")


def test_encode_returns_a_fresh_dict_each_time() -> None:
    event = make_event()
    first, _ = encode(event)
    first["Nats-Expected-Stream"] = "XR_EVENTS_US_EAST"  # js.publish(stream=...) does this
    assert "Nats-Expected-Stream" not in encode(event)[0]


def test_nats_msg_id_is_optional_on_decode() -> None:
    headers = encoded()
    del headers[HDR_MSG_ID]
    assert decode(headers, b'{"name": "lamp"}') == make_event()


def test_event_is_hashable_and_exposes_its_trace_id() -> None:
    event = make_event()
    assert hash(event) == hash(make_event())
    assert event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


# --- ignored headers -------------------------------------------------------------------------


def test_headers_outside_xr_are_ignored() -> None:
    headers = encoded()
    headers["Nats-Stream-Source"] = "XR_EVENTS_US_EAST 10 xr.events.> > xr.events.us-east.x"
    headers["Nats-Expected-Stream"] = "XR_EVENTS_US_EAST"
    headers["Content-Type"] = "text/plain"
    headers["X-Anything"] = "1"
    assert decode(headers, b'{"name": "lamp"}') == make_event()


@pytest.mark.parametrize(
    "name", [f"{p}Something" for p in PASSTHROUGH_PREFIXES] + ["Xr-Canary", "XR-DLQ-REASON"]
)
def test_passthrough_prefixes_are_ignored(name: str) -> None:
    headers = encoded()
    headers[name] = "whatever"
    assert decode(headers, b'{"name": "lamp"}') == make_event()


# --- malformed input -------------------------------------------------------------------------


def assert_malformed(headers: dict[str, str] | None, header: str | None, reason: str) -> None:
    with pytest.raises(MalformedEventError) as info:
        decode(headers, b"body")
    assert info.value.reason == reason, str(info.value)
    assert info.value.header == header
    assert header is None or header in str(info.value)
    assert isinstance(info.value, EnvelopeError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("header", REQUIRED)
def test_each_required_header_missing(header: str) -> None:
    headers = encoded()
    del headers[header]
    assert_malformed(headers, header, "missing_header")


def test_no_headers_at_all() -> None:
    assert_malformed(None, HDR_SCHEMA, "missing_header")
    assert_malformed({}, HDR_SCHEMA, "missing_header")


BAD_VALUES = [
    (HDR_PATH, "//evil.example.com/x"),
    (HDR_PATH, "http://x/y"),
    (HDR_PATH, "catalog/items"),
    (HDR_PATH, ""),
    (HDR_PATH, "/a b"),
    (HDR_PATH, "/a\r\nHost: evil"),
    (HDR_PATH, "/a\nb"),
    (HDR_PATH, "/a\x00b"),
    (HDR_PATH, "/a\tb"),
    (HDR_PATH, "/a\x7f"),
    (HDR_PATH, "/a\x85"),
    (HDR_PATH, "/a\u3000"),
    (HDR_PATH, "\\\\evil/x"),
    (HDR_EVENT_ID, "not-a-uuid"),
    (HDR_EVENT_ID, str(uuid.uuid4())),
    (HDR_EVENT_ID, EVENT_ID.upper()),
    (HDR_EVENT_ID, EVENT_ID.replace("-", "")),
    (HDR_EVENT_ID, ""),
    (HDR_ORIGIN, "US-EAST"),
    (HDR_ORIGIN, "us_east"),
    (HDR_ORIGIN, "1east"),
    (HDR_ORIGIN, ""),
    (HDR_ORIGIN, "a" * 32),
    (HDR_ORIGIN, "x" * 100_000),
    (HDR_SERVICE, ""),
    (HDR_SERVICE, "Catalog"),
    (HDR_SERVICE, "cat.alog"),
    (HDR_SERVICE, "http://catalog"),
    (HDR_METHOD, "put"),
    (HDR_METHOD, "Put"),
    (HDR_METHOD, "PUT POST"),
    (HDR_METHOD, ""),
    (HDR_METHOD, "PU\x00T"),
    (HDR_METHOD, "PUT/1"),
    (HDR_HLC, "1-1"),
    (HDR_HLC, "yesterday"),
    (HDR_HLC, "001700000000123-0000040"),
    (HDR_HLC, "-01700000000123-000004"),
    (HDR_KEY, ""),
    (HDR_KEY, "a\x00b"),
    (HDR_KEY, "a\x1bb"),
    (HDR_TRACE, ""),
    (HDR_TRACE, "00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    (HDR_TRACE, "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
    (HDR_TRACE, TRACE.upper()),
    (HDR_TRACE, "01" + TRACE[2:]),
    (HDR_TRACE, TRACE + "-extra"),
    (HDR_TRACE, "00-4bf92f35-00f067aa-01"),
    (HDR_TRACE, TRACE[:-1] + "g"),
    (HDR_TARGETS, ""),
    (HDR_TARGETS, ","),
    (HDR_TARGETS, "eu-west,"),
    (HDR_TARGETS, "eu-west,eu-west"),
    (HDR_TARGETS, "EU-WEST"),
    (HDR_TARGETS, "eu-west;ap-south"),
    (HDR_SIG, ""),
    (HDR_SIG, "no-colon"),
    (HDR_SIG, ":sig"),
    (HDR_SIG, "key:"),
    (HDR_SIG, "key:a b"),
    (HDR_SIG, "kéy:sig"),
    (HDR_MSG_ID, OTHER_EVENT_ID),
    (HDR_MSG_ID, ""),
    ("Xr-Req-Content-Type", "a\x01b"),
    ("Xr-Req-X-Thing", "\x7f"),
    ("Xr-Req-", "empty name"),
]


@pytest.mark.parametrize(("header", "value"), BAD_VALUES)
def test_bad_value_is_refused_naming_its_header(header: str, value: str) -> None:
    headers = encoded()
    headers[header] = value
    assert_malformed(headers, header, "bad_header")


def test_error_messages_stay_short_for_huge_values() -> None:
    headers = encoded()
    headers[HDR_ORIGIN] = "X" * 100_000
    with pytest.raises(MalformedEventError) as info:
        decode(headers, b"")
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("value", ["2", "0", "", "1.0", "01", "v1"])
def test_unsupported_schema(value: str) -> None:
    headers = encoded()
    headers[HDR_SCHEMA] = value
    assert_malformed(headers, HDR_SCHEMA, "unsupported_schema")


def test_unsupported_schema_wins_over_missing_fields() -> None:
    assert_malformed({"Xr-Schema": "2"}, HDR_SCHEMA, "unsupported_schema")


@pytest.mark.parametrize("name", ["Xr-Foo", "xr-foo", "XR-EVENTID", "Xr-Requested-By", "Xr-"])
def test_unknown_xr_header(name: str) -> None:
    headers = encoded()
    headers[name] = "1"
    assert_malformed(headers, name, "unknown_header")


@pytest.mark.parametrize(
    ("existing", "duplicate"),
    [("Xr-Path", "xr-path"), ("Xr-Req-Content-Type", "XR-REQ-CONTENT-TYPE")],
)
def test_same_header_in_two_cases_is_refused(existing: str, duplicate: str) -> None:
    headers = encoded()
    headers[duplicate] = headers[existing]
    assert_malformed(headers, duplicate, "duplicate_header")


# --- Event construction checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "header"),
    [
        ({"path": "//x"}, HDR_PATH),
        ({"method": "get"}, HDR_METHOD),
        ({"targets": ()}, HDR_TARGETS),
        ({"targets": ("eu-west", "eu-west")}, HDR_TARGETS),
        ({"sig": ""}, HDR_SIG),
        ({"key": " padded"}, HDR_KEY),
        ({"req_headers": (("Content-Type", "x"),)}, "Xr-Req-Content-Type"),
        ({"req_headers": (("b", "1"), ("a", "2"))}, "Xr-Req-A"),
        ({"req_headers": (("a", "1"), ("a", "2"))}, "Xr-Req-A"),
        ({"req_headers": (("a", " padded"),)}, "Xr-Req-A"),
        ({"req_headers": (("a", "line\nbreak"),)}, "Xr-Req-A"),
        ({"req_headers": (("a", "\ud800"),)}, "Xr-Req-A"),
        ({"req_headers": (("a b", "1"),)}, "Xr-Req-A b"),
    ],
)
def test_invalid_event_cannot_be_built(changes: dict[str, object], header: str) -> None:
    with pytest.raises(MalformedEventError) as info:
        make_event(**changes)
    assert info.value.reason == "bad_header"
    assert info.value.header == header


def test_event_with_another_schema_cannot_be_built() -> None:
    with pytest.raises(MalformedEventError) as info:
        make_event(schema=2)
    assert info.value.reason == "unsupported_schema"


def test_req_headers_from_mapping() -> None:
    built = req_headers_from(
        {"Idempotency-Key": " k-1 ", "Content-Type": "application/json", "accept": "a"}
    )
    assert built == (
        ("accept", "a"),
        ("content-type", "application/json"),
        ("idempotency-key", "k-1"),
    )
    assert make_event(req_headers=built).req_headers == built


def test_req_headers_from_joins_repeated_names_per_http_list_rules() -> None:
    assert req_headers_from({"Accept": "a", "ACCEPT": "b"}) == (("accept", "a, b"),)


def test_parse_targets() -> None:
    assert parse_targets("eu-west, ap-south") == ("eu-west", "ap-south")
    assert parse_targets("eu-west") == ("eu-west",)
    for bad in ["", "eu-west,,ap-south", "eu-west,eu-west", "EU"]:
        with pytest.raises(MalformedEventError) as info:
            parse_targets(bad)
        assert info.value.header == HDR_TARGETS


def test_targets_tolerate_optional_whitespace_on_decode() -> None:
    headers = encoded()
    headers[HDR_TARGETS] = "eu-west , ap-south"
    assert decode(headers, b'{"name": "lamp"}') == make_event()


# --- traceparent -----------------------------------------------------------------------------


def test_new_traceparent_is_valid_and_random() -> None:
    minted = {new_traceparent() for _ in range(200)}
    assert len(minted) == 200
    for value in minted:
        assert parse_traceparent(value) == value
        assert make_event(trace=value).trace == value


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (TRACE, TRACE),
        (f"  {TRACE}\t", TRACE),
        (TRACE.upper(), TRACE),
        ("cc" + TRACE[2:] + "-future-stuff", "00" + TRACE[2:]),
        ("01" + TRACE[2:], "00" + TRACE[2:]),
        ("ff" + TRACE[2:], None),
        (TRACE + "-extra", None),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),
        ("", None),
        ("garbage", None),
        (TRACE + "\n", None),
        ("cc" + TRACE[2:] + "x", None),
    ],
)
def test_parse_traceparent(raw: str, expected: str | None) -> None:
    assert parse_traceparent(raw) == expected


# --- size on the wire ------------------------------------------------------------------------


def test_wire_size_of_a_real_event_matches_nats_py() -> None:
    headers, payload = encode(make_event())
    block, body, total = nats_frame(headers, payload)
    assert body == payload
    assert wire_size(headers, payload) == total == len(block) + len(payload)
    assert header_block(headers) == block


nats_keys = st.builds(
    lambda pad_l, name, pad_r: pad_l + name + pad_r,
    st.sampled_from(["", " ", "\t"]),
    st.text(TOKEN_CHARS + "ABCXYZ", min_size=1, max_size=20),
    st.sampled_from(["", " "]),
)
nats_values = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(deadline=None)
@given(st.dictionaries(nats_keys, nats_values, max_size=8), st.binary(max_size=64))
def test_wire_size_matches_nats_py_for_any_headers(headers: dict[str, str], payload: bytes) -> None:
    headers["   "] = "nats-py skips a name that strips to nothing"
    block, _, total = nats_frame(headers, payload)
    assert wire_size(headers, payload) == total
    assert header_block(headers) == block  # what shared.frames.send_hpub sends as it is


@pytest.mark.parametrize("name", ["Bad Name", "Bad:Name", "Bad\x00", "Bé"])
def test_header_block_refuses_a_name_nats_py_refuses(name: str) -> None:
    with pytest.raises(nats.errors.BadHeaderError):
        header_block({name: "v"})
    with pytest.raises(nats.errors.BadHeaderError):
        nats_frame({name: "v"}, b"")


def test_wire_size_counts_the_bare_header_block() -> None:
    assert wire_size({}, b"abc") == len(b"NATS/1.0\r\n\r\n") + 3
    assert wire_size({"A": "b"}, b"") == len(b"NATS/1.0\r\nA: b\r\n\r\n")
    assert wire_size({"A": "é"}, b"") == len(b"NATS/1.0\r\nA: \xc3\xa9\r\n\r\n")


def test_check_fits_boundary() -> None:
    headers, payload = encode(make_event())
    size = wire_size(headers, payload)
    check_fits(headers, payload, max_payload=size)
    with pytest.raises(EventTooLargeError) as info:
        check_fits(headers, payload, max_payload=size - 1)
    assert info.value.size == size
    assert info.value.limit == size - 1
    assert str(size) in str(info.value)
    assert isinstance(info.value, EnvelopeError)


def test_max_body_for_keeps_a_header_budget() -> None:
    assert HEADER_BUDGET_BYTES == 16 * 1024
    assert max_body_for(1_048_576) == 1_048_576 - HEADER_BUDGET_BYTES
    assert max_body_for(8 * 1024) == 0


def test_header_budget_covers_a_typical_event() -> None:
    headers, _ = encode(make_event())
    assert wire_size(headers, b"") < HEADER_BUDGET_BYTES


# --- signing input ---------------------------------------------------------------------------

FIELD_CHANGES: list[dict[str, object]] = [
    {"event_id": OTHER_EVENT_ID},
    {"origin": "us-west"},
    {"service": "orders"},
    {"method": "POST"},
    {"path": "/catalog/items/43?expand=1"},
    {"path": "/catalog/items/42"},
    {"hlc": HlcStamp(1_700_000_000_123, 5)},
    {"hlc": HlcStamp(1_700_000_000_124, 4)},
    {"key": "/catalog/items/43"},
    {"trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"},
    {"targets": None},
    {"targets": ("ap-south", "eu-west")},
    {"targets": ("eu-west",)},
    {"req_headers": (("content-type", "application/json"),)},
    {"req_headers": (("content-type", "text/json"), ("idempotency-key", "abc-1"))},
    {"req_headers": (("content-type", "application/json"), ("idempotency-key", "abc-2"))},
    {"body": b'{"name": "lamP"}'},
    {"body": b'{"name": "lamp"} '},
    {"body": b""},
]


@pytest.mark.parametrize("changes", FIELD_CHANGES)
def test_signing_input_covers_every_field(changes: dict[str, object]) -> None:
    assert signing_input(make_event(**changes)) != signing_input(make_event())


@settings(deadline=None)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_signing_input_covers_every_body_byte(body: bytes, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    flipped = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    assert signing_input(make_event(body=body)) != signing_input(make_event(body=flipped))


def test_signing_input_excludes_the_signature_and_is_deterministic() -> None:
    unsigned = make_event(sig=None)
    assert signing_input(unsigned) == signing_input(make_event())
    assert signing_input(make_event(sig="other-key:AAAA")) == signing_input(unsigned)


def test_signing_input_layout() -> None:
    text = signing_input(make_event()).decode()
    lines = text.split("\n")
    assert lines[0] == "schema=1"
    assert lines[1] == f"event-id={EVENT_ID}"
    assert lines[9] == "targets=eu-west,ap-south"
    assert lines[10:12] == ["req.content-type=application/json", "req.idempotency-key=abc-1"]
    assert lines[-1].startswith("body-sha256=")
    assert len(lines[-1]) == len("body-sha256=") + 64


def test_fresh_ids_make_valid_events() -> None:
    event = make_event(event_id=uuid7_str(), trace=new_traceparent())
    assert decode(*encode(event)) == event
