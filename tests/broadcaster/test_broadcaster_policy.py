"""The replication policy: which targets an event owes (pure, no NATS)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.broadcaster.canary import canary_event, canary_message
from services.broadcaster.policy import Policy, ServicePolicy
from shared.envelope import HDR_TARGETS, Event, encode, new_traceparent
from shared.hlc import Hlc
from shared.ids import uuid7_str

REGIONS = ("us-east", "eu-west", "ap-south", "sa-east")
HERE = "us-east"
PEERS = frozenset(REGIONS) - {HERE}


def policy(**services: ServicePolicy) -> Policy:
    return Policy.build(HERE, REGIONS, services)


def svc(targets: tuple[str, ...] | None = None, *, allow: bool = False) -> ServicePolicy:
    return ServicePolicy(None if targets is None else frozenset(targets), allow)


def event(service: str = "catalog", targets: tuple[str, ...] | None = None) -> Event:
    return Event(
        event_id=uuid7_str(),
        origin=HERE,
        service=service,
        method="POST",
        path="/catalog/1",
        hlc=Hlc().now(),
        key="/catalog/1",
        body=b"{}",
        trace=new_traceparent(),
        targets=targets,
    )


def test_all_means_every_peer_never_the_origin() -> None:
    assert policy(catalog=svc()).targets(service="catalog", origin=HERE) == PEERS


def test_a_list_of_targets_is_honoured_and_the_origin_dropped() -> None:
    p = policy(catalog=svc(("eu-west", "us-east")))
    assert p.targets(service="catalog", origin=HERE) == {"eu-west"}


def test_request_targets_narrow_when_allowed() -> None:
    p = policy(catalog=svc(allow=True))
    assert p.targets(service="catalog", origin=HERE, requested=["ap-south"]) == {"ap-south"}


def test_request_targets_never_widen_the_service_targets() -> None:
    p = policy(catalog=svc(("eu-west",), allow=True))
    assert p.targets(service="catalog", origin=HERE, requested=["ap-south"]) == frozenset()
    both = p.targets(service="catalog", origin=HERE, requested=["ap-south", "eu-west"])
    assert both == {"eu-west"}


def test_request_targets_are_ignored_when_not_allowed() -> None:
    p = policy(catalog=svc(allow=False))
    assert p.targets(service="catalog", origin=HERE, requested=["ap-south"]) == PEERS


def test_request_targets_naming_the_origin_or_strangers_reach_nobody() -> None:
    p = policy(catalog=svc(allow=True))
    assert p.targets(service="catalog", origin=HERE, requested=["us-east", "mars"]) == set()


def test_unknown_service_goes_to_every_peer_narrowed_by_request_targets() -> None:
    p = policy()
    assert p.targets(service="ghost", origin=HERE) == PEERS
    assert p.targets(service="ghost", origin=HERE, requested=["eu-west"]) == {"eu-west"}


def test_a_canary_goes_to_its_target_only() -> None:
    p = policy(catalog=svc(("eu-west",)))
    assert p.targets(service="xr-canary", origin=HERE, canary="ap-south") == {"ap-south"}
    assert p.targets(service="xr-canary", origin=HERE, canary=HERE) == set()
    assert p.targets(service="xr-canary", origin=HERE, canary="mars") == set()


def test_route_of_a_stored_event() -> None:
    p = policy(catalog=svc(allow=True))
    headers, payload = encode(event(targets=("eu-west",)))
    route = p.route("xr.events.us-east.catalog", headers, payload)
    assert route.targets == {"eu-west"}
    assert route.kind == "event"
    assert route.lane == ("catalog", "/catalog/1")
    assert route.known_service


def test_route_of_a_canary() -> None:
    subject, headers, payload = canary_message(
        canary_event(HERE, "sa-east", slot_ms=1_700_000_000_000, hlc=Hlc()), "sa-east"
    )
    route = policy().route(subject, headers, payload)
    assert (route.kind, route.known_service) == ("canary", True)
    assert route.targets == {"sa-east"}


def test_route_of_a_malformed_message_goes_to_every_peer_unchanged() -> None:
    route = policy().route("xr.events.us-east.catalog", {"Xr-Origin": "us-east"}, b"x")
    assert route.kind == "malformed"
    assert route.targets == PEERS
    assert (route.origin, route.service) == ("us-east", "catalog")
    assert route.problem is not None


def test_route_reads_header_names_in_any_case() -> None:
    headers, payload = encode(event(targets=("eu-west",)))
    headers = {k.lower(): v for k, v in headers.items()}
    route = policy(catalog=svc(allow=True)).route("xr.events.us-east.catalog", headers, payload)
    assert route.targets == {"eu-west"}
    assert HDR_TARGETS.lower() in headers


def _any_case(headers: dict[str, str]) -> dict[str, str]:
    """The same headers in lower case: not the bridge's spelling, so the full decode runs."""
    return {k.lower(): v for k, v in headers.items()}


@pytest.mark.parametrize("kind", ["event", "targets", "unknown service", "canary"])
def test_the_route_read_from_the_headers_is_the_decoded_one(kind: str) -> None:
    p = policy(catalog=svc(("eu-west", "ap-south"), allow=True))
    if kind == "canary":
        message = canary_message(
            canary_event(HERE, "sa-east", slot_ms=1_700_000_000_000, hlc=Hlc()), "sa-east"
        )
    else:
        service = "other" if kind == "unknown service" else "catalog"
        targets = ("eu-west",) if kind == "targets" else None
        headers, payload = encode(event(service, targets))
        message = (f"xr.events.{HERE}.{service}", headers, payload)
    subject, headers, payload = message
    assert p.route(subject, headers, payload) == p.route(subject, _any_case(headers), payload)


def test_only_the_routing_headers_are_checked_here() -> None:
    # A bad HLC is the target replayer's to dead-letter: the route follows the service's
    # policy. Unreadable routing headers (a bad Xr-Targets) make the event malformed here.
    p = policy(catalog=svc(("eu-west",)))
    headers, payload = encode(event())
    route = p.route("xr.events.us-east.catalog", {**headers, "Xr-Hlc": "soon"}, payload)
    assert (route.kind, route.targets) == ("event", frozenset({"eu-west"}))
    bad = {**headers, "Xr-Targets": "eu west!"}
    route = p.route("xr.events.us-east.catalog", bad, payload)
    assert (route.kind, route.targets) == ("malformed", PEERS)


regions_st = st.sets(st.sampled_from(REGIONS))
services_st = st.builds(
    lambda t, a: ServicePolicy(None if t is None else frozenset(t), a),
    st.none() | regions_st,
    st.booleans(),
)


@given(
    service=services_st,
    requested=st.none() | st.lists(st.sampled_from((*REGIONS, "mars")), max_size=5),
    canary=st.none() | st.sampled_from((*REGIONS, "mars")),
    known=st.booleans(),
)
def test_targets_are_always_peers_within_the_policy(
    service: ServicePolicy, requested: list[str] | None, canary: str | None, known: bool
) -> None:
    p = policy(catalog=service) if known else policy()
    got = p.targets(service="catalog", origin=HERE, requested=requested, canary=canary)
    assert got <= PEERS
    assert HERE not in got
    if canary is not None:
        assert got <= {canary}
        return
    if known and service.targets is not None:
        assert got <= service.targets
    if requested is not None and (service.allow_request_targets or not known):
        assert got <= set(requested)


@pytest.mark.parametrize("requested", [None, ("eu-west",)])
def test_route_and_targets_agree(requested: tuple[str, ...] | None) -> None:
    p = policy(catalog=svc(allow=True))
    headers, payload = encode(event(targets=requested))
    expected = p.targets(service="catalog", origin=HERE, requested=requested)
    assert p.route("xr.events.us-east.catalog", headers, payload).targets == expected
