"""Header rewriting for the proxy (pure; RFC 9110 §7.6.1, docs/DESIGN.md §4, §5).

Headers are handled as `(name, value)` pairs in arrival order, so repeated headers (several
`Set-Cookie`, several `X-Forwarded-For`) survive untouched unless a rule says otherwise.

* Hop-by-hop headers never cross the proxy: `Connection`, the headers `Connection` names,
  `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`.
* Towards the upstream: `Host` becomes the upstream's own (the client's goes to
  `X-Forwarded-Host`), `Expect` is answered by this proxy, the client's `Xr-*` headers are
  always dropped (spoofing: a verified replay marker's come back through `add`), and
  `X-Forwarded-For/-Proto/-Host` get this hop appended.
* Into the event: only allow-listed request headers, repeated ones joined per HTTP list rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDict

from shared.envelope import ReqHeaders, req_headers_from

__all__ = [
    "DEFAULT_FORWARDED",
    "HOP_BY_HOP",
    "Forwarded",
    "Pairs",
    "event_headers",
    "response_headers",
    "upstream_headers",
    "without_hop_by_hop",
]

Pairs = list[tuple[str, str]]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers copied into every event (plus `bridge.forward_headers`).
DEFAULT_FORWARDED = frozenset({"content-type", "content-encoding", "idempotency-key"})
# Headers this proxy answers or sets itself rather than forwarding.
_PROXY_OWNED = frozenset({"host", "expect"})
# Never forwarded as they came: hop-by-hop, and the ones this proxy answers or sets itself.
_DROPPED = HOP_BY_HOP | _PROXY_OWNED
_XFF_LOW, _XFP_LOW, _XFH_LOW = "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"
_XF_NAMES = {
    _XFF_LOW: "X-Forwarded-For",
    _XFP_LOW: "X-Forwarded-Proto",
    _XFH_LOW: "X-Forwarded-Host",
}


@dataclass(frozen=True, slots=True)
class Forwarded:
    """This hop, as the `X-Forwarded-*` headers describe it."""

    client: str | None  # peer address
    proto: str  # "http" or "https"
    host: str | None  # the Host header the client sent


def _connection_tokens(pairs: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def without_hop_by_hop(pairs: Iterable[tuple[str, str]]) -> Pairs:
    """`pairs` minus hop-by-hop headers, including every header `Connection` names."""
    items = list(pairs)
    drop = HOP_BY_HOP | _connection_tokens(items)
    return [(name, value) for name, value in items if name.lower() not in drop]


def upstream_headers(
    pairs: Iterable[tuple[str, str]],
    hop: Forwarded,
    *,
    add: Iterable[tuple[str, str]] = (),
) -> CIMultiDict[str]:
    """The headers to send upstream for a client request with `pairs`.

    The client's `Xr-*` headers are dropped; `add` comes last and replaces any header of the
    same name (the bridge's `Xr-Hlc`, `Xr-Event-Id`, or a verified replay marker's).
    Each `X-Forwarded-*` this hop sets is joined into one header (earlier hops' values first,
    empty ones dropped) placed after the kept headers; one this hop cannot tell (no peer
    address, no Host) is left as the client sent it.

    One pass over the headers: this runs for every request.
    """
    added = list(add)
    drop = _DROPPED | {name.lower() for name, _ in added}
    hops = {_XFF_LOW: hop.client, _XFP_LOW: hop.proto, _XFH_LOW: hop.host}
    joined: dict[str, list[str]] = {low: [] for low, value in hops.items() if value is not None}
    kept: list[tuple[str, str, str]] = []
    named: set[str] = set()  # headers the client's Connection header names (hop-by-hop)
    for name, value in pairs:
        low = name.lower()
        if low in drop:
            if low == "connection":
                named.update(t.strip().lower() for t in value.split(",") if t.strip())
            continue
        if low[:3] == "xr-":
            continue
        earlier = joined.get(low)
        if earlier is None:
            kept.append((low, name, value))
        elif value.strip():
            earlier.append(value.strip())
    # Connection may come after the headers it names, so they are dropped only now.
    out = CIMultiDict((name, value) for low, name, value in kept if low not in named)
    for low, values in joined.items():
        this_hop = hops[low]
        assert this_hop is not None
        earlier = [] if low in named else values
        out.add(_XF_NAMES[low], ", ".join([*earlier, this_hop]))
    out.extend(added)
    return out


def response_headers(pairs: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The upstream's response headers as the client gets them (repeats kept, in order)."""
    return CIMultiDict(without_hop_by_hop(pairs))


def event_headers(pairs: Iterable[tuple[str, str]], allow: frozenset[str]) -> ReqHeaders:
    """The allow-listed request headers (lower-case names in `allow`) in `Event` form."""
    chosen: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in pairs if name.lower() in allow
    )
    return req_headers_from(chosen)
