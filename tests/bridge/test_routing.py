"""Routing policy (pure): which service, whether it replicates, its partition key, targets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from services.bridge.routing import (
    KeyRule,
    Route,
    RouteConflictError,
    RouteTable,
    TargetsError,
    prefix_matches,
    request_targets,
    upstream_url,
)
from shared.settings import ServiceSettings


def service(routes: list[str], **options: object) -> ServiceSettings:
    return ServiceSettings.model_validate(
        {"upstream": "http://127.0.0.1:1", "routes": routes, **options}
    )


def table(**services: ServiceSettings) -> RouteTable:
    return RouteTable.from_services(services)


def served(routes: RouteTable, host: str | None, path: str) -> str | None:
    route = routes.match(host, path)
    return None if route is None else route.service


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/catalog", "/catalog", True),
        ("/catalog", "/catalog/42", True),
        ("/catalog", "/catalogue", False),
        ("/catalog", "/cat", False),
        ("/catalog/", "/catalog/42", True),
        ("/catalog/", "/catalog", False),
        ("/", "/anything", True),
        ("/", "/", True),
    ],
)
def test_prefix_matches_on_segment_boundaries(prefix: str, path: str, matches: bool) -> None:
    assert prefix_matches(prefix, path) is matches


@given(st.from_regex(r"/[a-z]{1,5}(/[a-z]{1,5}){0,3}", fullmatch=True))
def test_a_prefix_always_matches_its_own_subtree(prefix: str) -> None:
    assert prefix_matches(prefix, prefix)
    assert prefix_matches(prefix, prefix + "/x")
    assert not prefix_matches(prefix, prefix + "x")


def test_longest_prefix_wins_and_host_routes_win_over_prefixes() -> None:
    routes = table(
        shop=service(["/shop"]),
        cart=service(["/shop/cart"]),
        api=service(["host:API.example.com"]),
    )
    assert served(routes, None, "/shop/items") == "shop"
    assert served(routes, None, "/shop/cart/1") == "cart"
    assert served(routes, None, "/shop/cartography") == "shop"
    assert served(routes, "api.example.com:8443", "/shop") == "api"
    assert served(routes, "other.example.com", "/shop") == "shop"
    assert served(routes, None, "/nothing") is None


def test_two_services_claiming_one_route_is_a_configuration_error() -> None:
    with pytest.raises(RouteConflictError, match=r"services\.a and services\.b"):
        table(a=service(["/x"]), b=service(["/x"]))


def test_replication_by_method_and_exclusion() -> None:
    route = Route.from_settings("svc", service(["/svc"], exclude=["/svc/internal/", "/svc/tmp"]))
    assert route.replicates("POST", "/svc/a")
    assert route.replicates("DELETE", "/svc/a")
    assert not route.replicates("GET", "/svc/a")
    assert not route.replicates("POST", "/svc/internal/a")
    assert not route.replicates("POST", "/svc/tmp")
    assert route.replicates("POST", "/svc/tmpfile")
    opted_out = Route.from_settings("svc", service(["/svc"], replicate=[]))
    assert not opted_out.replicates("POST", "/svc/a")


@pytest.mark.parametrize(
    ("rule", "path", "headers", "key"),
    [
        ("path", "/orders/7", {}, "/orders/7"),
        ("header:X-Tenant", "/orders/7", {"x-tenant": " acme "}, "acme"),
        ("header:X-Tenant", "/orders/7", {}, "/orders/7"),
        (r"^/orders/(\d+)", "/orders/7/lines/2", {}, "7"),
        (r"^/orders/(?P<key>\d+)/(x)", "/orders/7/x", {}, "7"),
        (r"^/orders/\d+", "/orders/7/lines", {}, "/orders/7"),
        (r"^/carts/(\d+)", "/orders/7", {}, "/orders/7"),
    ],
)
def test_partition_key_rules(rule: str, path: str, headers: dict[str, str], key: str) -> None:
    from multidict import CIMultiDict

    assert KeyRule(rule).key_for(path, CIMultiDict(headers)) == key


def test_request_targets_narrow_but_never_widen() -> None:
    regions = ("us-east", "eu-west", "ap-south")
    allowed = Route.from_settings(
        "svc", service(["/svc"], targets=["eu-west", "ap-south"], allow_request_targets=True)
    )
    assert request_targets(allowed, "eu-west", regions) == ("eu-west",)
    assert request_targets(allowed, None, regions) is None
    with pytest.raises(TargetsError):
        request_targets(allowed, "us-east", regions)
    with pytest.raises(TargetsError):
        request_targets(allowed, "eu-west,,", regions)
    everywhere = Route.from_settings("svc", service(["/svc"], allow_request_targets=True))
    assert request_targets(everywhere, "us-east, ap-south", regions) == ("us-east", "ap-south")
    not_allowed = Route.from_settings("svc", service(["/svc"]))
    assert request_targets(not_allowed, None, regions) is None
    with pytest.raises(TargetsError, match="allow_request_targets = false"):
        request_targets(not_allowed, "eu-west", regions)


@pytest.mark.parametrize(
    ("base", "path", "query", "expected"),
    [
        ("http://10.0.0.1:7001", "/c/1", "", "http://10.0.0.1:7001/c/1"),
        ("http://10.0.0.1:7001/api/", "/c/1", "a=%20&b", "http://10.0.0.1:7001/api/c/1?a=%20&b"),
        ("http://u:p@backend", "//evil.example/x", "", "http://u:p@backend//evil.example/x"),
        ("http://127.0.0", "/.1:9/x@y", "", "http://127.0.0/.1:9/x@y"),
    ],
)
def test_upstream_urls_keep_the_base_host_and_the_raw_target(
    base: str, path: str, query: str, expected: str
) -> None:
    url = upstream_url(URL(base, encoded=True), path, query)
    assert str(url) == expected
    assert (url.raw_host, url.port) == (URL(base).raw_host, URL(base).port)


def test_upstream_url_refuses_a_target_that_is_not_origin_form() -> None:
    with pytest.raises(ValueError, match="origin-form"):
        upstream_url(URL("http://127.0.0"), ".1:9", "")
