"""Header rewriting (pure): hop-by-hop, X-Forwarded-*, Xr-* stripping, the event allow-list."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.bridge.headers import (
    DEFAULT_FORWARDED,
    HOP_BY_HOP,
    Forwarded,
    event_headers,
    response_headers,
    upstream_headers,
    without_hop_by_hop,
)

HOP = Forwarded(client="10.0.0.1", proto="http", host="shop.example.com")


def test_hop_by_hop_and_connection_named_headers_are_removed() -> None:
    pairs = [
        ("Connection", "close, X-Secret , keep-alive"),
        ("X-Secret", "s"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic x"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("X-Kept", "1"),
        ("x-kept", "2"),
    ]
    assert without_hop_by_hop(pairs) == [("X-Kept", "1"), ("x-kept", "2")]


def test_upstream_headers_strip_xr_append_forwarding_and_add_ours() -> None:
    pairs = [
        ("Host", "shop.example.com"),
        ("Expect", "100-continue"),
        ("X-Forwarded-For", "1.1.1.1"),
        ("X-Forwarded-For", "2.2.2.2"),
        ("Xr-Hlc", "999999999999999-000000"),
        ("xr-anything", "x"),
        ("Cookie", "a=1"),
    ]
    out = upstream_headers(pairs, HOP, add=[("Xr-Hlc", "000000000000001-000000")])
    assert list(out.items()) == [
        ("Cookie", "a=1"),
        ("X-Forwarded-For", "1.1.1.1, 2.2.2.2, 10.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "shop.example.com"),
        ("Xr-Hlc", "000000000000001-000000"),
    ]


def test_only_added_xr_headers_go_upstream() -> None:
    """A verified replay marker's headers come through `add`; the client's never pass."""
    pairs = [("Xr-Replayed-From", "eu-west"), ("Xr-Hlc", "999999999999999-000000"), ("Xr-X", "1")]
    marker = [("Xr-Replayed-From", "eu-west"), ("Xr-Hlc", "000000000000001-000000")]
    out = upstream_headers(pairs, Forwarded(None, "http", None), add=marker)
    assert [(k, v) for k, v in out.items() if k.lower().startswith("xr-")] == marker
    assert "X-Forwarded-For" not in out


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Xr-Key", "XR-TRACE", "xr-sig", "Xr-Req-A", "X-Ok", "Accept"]),
            st.text(alphabet="abc", max_size=3),
        )
    )
)
def test_no_client_xr_header_ever_reaches_the_upstream(pairs: list[tuple[str, str]]) -> None:
    out = upstream_headers(pairs, HOP)
    assert not [name for name in out if name.lower().startswith("xr-")]


def test_response_headers_keep_repeats_and_drop_hop_by_hop() -> None:
    out = response_headers(
        [
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Connection", "keep-alive"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "10"),
        ]
    )
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    assert "Transfer-Encoding" not in out
    assert out["Content-Length"] == "10"


def test_event_headers_allow_list_and_list_joining() -> None:
    pairs = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "k"),
        ("X-Tenant", "a"),
        ("x-tenant", "b"),
        ("Authorization", "secret"),
    ]
    assert event_headers(pairs, DEFAULT_FORWARDED) == (
        ("content-type", "application/json"),
        ("idempotency-key", "k"),
    )
    assert event_headers(pairs, DEFAULT_FORWARDED | {"x-tenant"})[-1] == ("x-tenant", "a, b")
    assert "connection" in HOP_BY_HOP


def _reference_upstream_headers(
    pairs: list[tuple[str, str]], hop: Forwarded, add: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The rules spelled out one at a time (the single-pass version must agree)."""
    replaced = {name.lower() for name, _ in add}
    kept = [
        (name, value)
        for name, value in without_hop_by_hop(pairs)
        if name.lower() not in {"host", "expect"} | replaced and not name.lower().startswith("xr-")
    ]
    for name, value in (
        ("X-Forwarded-For", hop.client),
        ("X-Forwarded-Proto", hop.proto),
        ("X-Forwarded-Host", hop.host),
    ):
        if value is None:
            continue
        earlier = [v.strip() for n, v in kept if n.lower() == name.lower() and v.strip()]
        kept = [(n, v) for n, v in kept if n.lower() != name.lower()]
        kept.append((name, ", ".join([*earlier, value])))
    return [*kept, *add]


_NAMES = st.sampled_from(
    [
        "Host",
        "Expect",
        "Connection",
        "X-Forwarded-For",
        "x-forwarded-host",
        "X-Forwarded-Proto",
        "Xr-Hlc",
        "xr-key",
        "Keep-Alive",
        "X-A",
        "x-a",
        "Cookie",
    ]
)
_VALUES = st.sampled_from(["", " ", "1", " 2 ", "x-a", "X-Forwarded-For, x-a", "close"])


@given(
    pairs=st.lists(st.tuples(_NAMES, _VALUES), max_size=12),
    client=st.sampled_from([None, "10.0.0.1"]),
    host=st.sampled_from([None, "shop.example.com"]),
    add=st.sampled_from([[], [("Xr-Hlc", "h"), ("Xr-Event-Id", "e")], [("X-A", "ours")]]),
)
def test_upstream_headers_follow_the_rules(
    pairs: list[tuple[str, str]],
    client: str | None,
    host: str | None,
    add: list[tuple[str, str]],
) -> None:
    hop = Forwarded(client=client, proto="https", host=host)
    out = upstream_headers(pairs, hop, add=add)
    assert list(out.items()) == _reference_upstream_headers(pairs, hop, add)
