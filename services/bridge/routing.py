"""Which service a request is for, and whether it replicates (pure; docs/DESIGN.md §5, §6).

A service's `routes` are path prefixes (`/catalog`) or hosts (`host:catalog.example.com`).

* A host route claims every path of that host (virtual hosting), so it wins over any prefix.
* Among prefixes the longest match wins. A prefix matches on segment boundaries: `/catalog`
  matches `/catalog`, `/catalog/42` and `/catalog?x=1` but not `/catalogue`; a prefix ending
  in `/` matches everything below it.
* Paths are compared raw, exactly as the client sent them (no percent-decoding), which is also
  how they are forwarded and replicated.

Errors::

    ValueError
     └── RoutingError
          ├── RouteConflictError   two services claim the same route (configuration)
          └── TargetsError         a request's Xr-Targets is invalid or not allowed
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from yarl import URL

from shared.envelope import MalformedEventError, Rule, parse_targets
from shared.settings import ServiceSettings, prefix_matches

__all__ = [
    "KeyRule",
    "Route",
    "RouteConflictError",
    "RouteTable",
    "RoutingError",
    "TargetsError",
    "is_excluded",
    "prefix_matches",
    "request_targets",
    "upstream_url",
]

_HOST_PREFIX = "host:"


class RoutingError(ValueError):
    """Base of the routing errors."""


class RouteConflictError(RoutingError):
    """Two services claim the same path prefix or host."""


class TargetsError(RoutingError):
    """A request's explicit target regions are malformed or not allowed."""


@dataclass(frozen=True, slots=True)
class KeyRule:
    """The partition key rule of a service: `path`, `header:<name>` or a regex over the path.

    With a regex, the key is its named group `key`, else its first group, else the whole
    match. When the header is absent or the regex does not match, the key is the path: a write
    always has a key, and the same request always gets the same one.
    """

    rule: str

    def key_for(self, path: str, headers: Mapping[str, str]) -> str:
        """The key of a request to `path` (no query string) with `headers` (case-insensitive)."""
        if self.rule == "path":
            return path
        if self.rule.startswith("header:"):
            value = headers.get(self.rule.removeprefix("header:"), "").strip(" \t")
            return value or path
        return _regex_key(re.compile(self.rule), path)


def _regex_key(pattern: re.Pattern[str], path: str) -> str:
    match = pattern.search(path)
    if match is None:
        return path
    if "key" in pattern.groupindex:
        value = match["key"]
    elif pattern.groups:
        value = match[1]
    else:
        value = match[0]
    return value or path


@dataclass(frozen=True, slots=True)
class Route:
    """One service as the bridge sees it."""

    service: str
    upstream: str
    replicate: frozenset[str]
    exclude: tuple[str, ...]
    key: KeyRule
    targets: tuple[str, ...] | None  # None: every region
    allow_request_targets: bool
    settings: ServiceSettings  # for the replication rules (`rule_for`) and `create_key`
    base: URL  # `upstream`, parsed once

    @classmethod
    def from_settings(cls, name: str, service: ServiceSettings) -> Route:
        return cls(
            service=name,
            upstream=service.upstream,
            base=URL(service.upstream, encoded=True),
            replicate=frozenset(service.replicate),
            exclude=tuple(service.exclude),
            key=KeyRule(service.key),
            targets=None if service.targets == "all" else tuple(service.targets),
            allow_request_targets=service.allow_request_targets,
            settings=service,
        )

    def url_for(self, path: str, query: str) -> URL:
        """The upstream URL for a request's raw origin-form `path` and `query`."""
        return upstream_url(self.base, path, query)

    def rule_for(self, method: str, path: str) -> Rule:
        return self.settings.rule_for(method, path)

    def replicates(self, method: str, path: str) -> bool:
        """Whether a successful `method` on `path` (no query string) becomes an event."""
        return method in self.replicate and not is_excluded(self.exclude, path)


def is_excluded(exclude: Iterable[str], path: str) -> bool:
    return any(prefix_matches(prefix, path) for prefix in exclude)


class RouteTable:
    """All routes of a region file; `match` picks the route of one request."""

    def __init__(self, routes: Iterable[tuple[str, Route]]) -> None:
        self._hosts: dict[str, Route] = {}
        prefixes: dict[str, Route] = {}
        for spec, route in routes:
            if spec.startswith(_HOST_PREFIX):
                _claim(self._hosts, spec.removeprefix(_HOST_PREFIX).lower(), route, spec)
            else:
                _claim(prefixes, spec, route, spec)
        self._prefixes = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)

    @classmethod
    def from_services(cls, services: Mapping[str, ServiceSettings]) -> RouteTable:
        """Raises RouteConflictError when two services claim the same route."""
        return cls(
            (spec, Route.from_settings(name, service))
            for name, service in services.items()
            for spec in service.routes
        )

    def match(self, host: str | None, path: str) -> Route | None:
        """The route for a request to `host` (the Host header) and `path` (no query)."""
        if host and self._hosts:
            route = self._hosts.get(_hostname(host))
            if route is not None:
                return route
        for prefix, route in self._prefixes:
            if prefix_matches(prefix, path):
                return route
        return None


def _claim(table: dict[str, Route], key: str, route: Route, spec: str) -> None:
    other = table.get(key)
    if other is not None and other.service != route.service:
        raise RouteConflictError(
            f"route {spec!r} is claimed by both services.{other.service} "
            f"and services.{route.service}"
        )
    table[key] = route


def _hostname(host: str) -> str:
    """`Catalog.Example.com:8080` -> `catalog.example.com`; `[::1]:80` -> `[::1]`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def request_targets(
    route: Route, value: str | None, regions: Iterable[str]
) -> tuple[str, ...] | None:
    """The target regions a request chose with `Xr-Targets`, or None to follow the policy.

    The header only counts where the service allows it; it may narrow the service's targets,
    never widen them. Raises TargetsError for a malformed value, a region not allowed, or
    any value where the service does not allow it: dropping it would replicate the write to
    regions its client meant to keep it out of.
    """
    if value is None:
        return None
    if not route.allow_request_targets:
        raise TargetsError(
            f"services.{route.service} does not let a request choose its target regions "
            "(allow_request_targets = false): send the write without Xr-Targets"
        )
    try:
        targets = parse_targets(value)
    except MalformedEventError as exc:
        raise TargetsError(str(exc)) from exc
    allowed = set(route.targets if route.targets is not None else regions)
    refused = [t for t in targets if t not in allowed]
    if refused:
        raise TargetsError(f"Xr-Targets names regions this service cannot target: {refused}")
    return targets


def upstream_url(base: URL, path: str, query: str) -> URL:
    """`base` with the raw origin-form `path` (it starts with `/`) below its own path and the
    raw `query`, both kept byte for byte. Built from parts, never by joining strings, so
    nothing in the request can change the upstream's scheme, host or port."""
    if not path.startswith("/"):
        raise ValueError(f"not an origin-form path: {path[:80]!r}")
    return URL.build(
        scheme=base.scheme,
        authority=base.raw_authority,
        path=base.raw_path.rstrip("/") + path,
        query_string=query,
        encoded=True,
    )
