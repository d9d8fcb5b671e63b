"""Fuzzing the replayer's request building: whatever path and forwarded headers an event holds,
`build_request` either refuses it with a `RequestError` or makes a call that stays under the
service's base URL (also once a URL parser or the service resolves dot segments and escapes)
and carries no hop-by-hop, `Host` or client `Xr-*` header."""

from __future__ import annotations

import string
import time
from urllib.parse import unquote

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from yarl import URL

from services.replayer.pathsafe import UnsafePathError, check_path, request_target
from services.replayer.request import HOP_BY_HOP, RequestError, build_request
from shared.envelope import HDR_REPLAYED_SIG, Event, MalformedEventError, new_traceparent
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.settings import ServiceSettings
from shared.signing import ReplayMarker, Signer, TrustedKey, Verifier, verify_replay_marker

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASES = ["http://10.0.0.1:7001", "http://catalog.internal:8080/api", "https://[::1]:9443/v1/x"]
KEY = Ed25519PrivateKey.generate()
SIGNER = Signer("eu-west-r1", KEY)
VERIFIER = Verifier(
    {"eu-west-r1": TrustedKey(KEY.public_key(), "eu-west", frozenset({"replayer"}))}
)
OURS = {"idempotency-key", "xr-replayed-from", "xr-event-id", "xr-hlc", "traceparent",
        "xr-replayed-sig"}  # fmt: skip

# Pieces that have let paths escape a base somewhere: dots, slashes, escapes of both (once
# and twice encoded), backslashes, schemes, fragments, non-ASCII look-alikes.
pieces = st.sampled_from(
    ["/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%252e", "%25", "\\", "%5c", "?", "#",
     "%23", ";", "@", ":", "http:", "a", "x y", "\u2024", "\uff0e", "\u3002", "é", "%c3%a9",
     "%", "%zz", "%00", "~", "&", "="]
)  # fmt: skip
paths = st.one_of(
    st.lists(st.one_of(pieces, st.text(string.ascii_letters, max_size=3)), max_size=10).map(
        lambda parts: "/" + "".join(parts)
    ),
    st.text(st.characters(codec="utf-8"), max_size=30).map(lambda t: "/" + t),
)
header_names = st.one_of(
    st.sampled_from(sorted(HOP_BY_HOP | OURS | {"xr-targets", "xr-sig", "content-type"})),
    st.text(string.ascii_lowercase + "-", min_size=1, max_size=12),
)
header_pairs = st.lists(
    st.tuples(header_names, st.text(string.printable.strip(), max_size=12)),
    max_size=6,
    unique_by=lambda pair: pair[0],
)


def make_event(path: str, req_headers: list[tuple[str, str]]) -> Event | None:
    try:
        return Event(
            event_id=uuid7_str(), origin="us-east", service="catalog", method="PUT", path=path,
            hlc=HlcStamp(1_700_000_000_000, 0), key="/catalog", body=b"{}",
            trace=new_traceparent(), req_headers=tuple(sorted(req_headers)),
        )  # fmt: skip
    except MalformedEventError:
        return None


def under(url: URL, base: URL) -> bool:
    prefix = base.path.rstrip("/")
    same_origin = (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)
    return same_origin and (url.path == prefix or url.path.startswith(prefix + "/"))


@FUZZ
@given(st.sampled_from(BASES), paths, header_pairs)
def test_a_call_never_leaves_the_base_url(
    base: str, path: str, req_headers: list[tuple[str, str]]
) -> None:
    event = make_event(path, req_headers)
    assume(event is not None)
    assert event is not None
    services = {"catalog": ServiceSettings(upstream=base, routes=["/"])}
    expires = int(time.time()) + 60
    try:
        call = build_request(event, services, signer=SIGNER, marker_expires_at=expires)
    except RequestError:
        return
    sent = URL(call.url, encoded=True)  # what aiohttp puts on the wire
    assert under(sent, URL(base))
    # A parser that resolves dot segments and a service that decodes escapes still see a
    # path under the base.
    assert under(URL(call.url), URL(base))
    decoded = unquote(sent.raw_path)
    assert not any(seg in {".", ".."} for seg in decoded.split("/"))
    assert "#" not in call.url
    names = {name.lower() for name in call.headers}
    assert not names & (HOP_BY_HOP - OURS)
    assert "host" not in names
    assert {n for n in names if n.startswith("xr-")} <= OURS
    target = call.url[len(base) :]
    marker = ReplayMarker(event.origin, event.event_id, str(event.hlc), "PUT", target, event.body)
    sig = call.headers[HDR_REPLAYED_SIG]
    assert verify_replay_marker(VERIFIER, sig, marker, region="eu-west", now=time.time())


@FUZZ
@given(paths)
def test_pathsafe_gives_a_safe_path_or_its_own_error(path: str) -> None:
    try:
        target = request_target(path)
    except UnsafePathError:
        return
    assert target.isascii()
    assert check_path(target) == target
    assert under(URL("http://h:1/b" + target), URL("http://h:1/b"))


def test_the_fuzzer_reaches_both_outcomes() -> None:
    """The strategy makes calls and refusals, so the properties above test something."""
    services = {"catalog": ServiceSettings(upstream=BASES[0], routes=["/"])}
    ok = make_event("/catalog/caf%C3%A9?x=1", [("host", "evil"), ("connection", "close")])
    bad = make_event("/catalog/%2e%2e/%2e%2e/admin", [])
    assert ok is not None
    assert bad is not None
    assert set(build_request(ok, services).headers) >= {"Idempotency-Key"}
    with pytest.raises(RequestError) as refused:
        build_request(bad, services)
    assert refused.value.reason == "unsafe_path"
