"""The region file (docs/DESIGN.md §6): one TOML per region stack, read by every service.

`load_settings(path)` is the only entry point. Values come from the TOML file, and every value
can be overridden by an environment variable prefixed `XR_` (`__` for nesting, e.g.
`XR_NATS__SERVERS`, `XR_SERVICES__CATALOG__UPSTREAM`). Lists may be given in the environment
either as JSON (`["a","b"]`) or comma-separated (`a,b`).

Every model is frozen and rejects unknown keys, so a typo is an error at start, not a silently
ignored setting. Failures raise `ConfigError`, whose message is one line naming the key.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from shared.envelope import Rule, default_rule
from shared.regions import InvalidNameError, key_belongs_to, validate_region, validate_service

__all__ = [
    "DEFAULT_METHODS",
    "BridgeSettings",
    "BroadcasterSettings",
    "ConfigError",
    "NatsSettings",
    "ReplayerSettings",
    "ServiceSettings",
    "Settings",
    "SigningSettings",
    "StreamSettings",
    "load_settings",
    "prefix_matches",
    "redact_userinfo",
    "redacted_dump",
]

DEFAULT_METHODS = ("POST", "PUT", "PATCH", "DELETE")
_METHOD_RE = re.compile(r"[A-Z]+")
_LISTEN_RE = re.compile(r"(?P<host>\[[0-9a-fA-F:]+\]|[^:\s]+):(?P<port>\d{1,5})")
# A URL's userinfo, up to the last `@` of the token: a password may hold `/` or `@` unescaped.
_USERINFO_RE = re.compile(r"(?<=//)[^\s'\",]*@")
_MIB = 1024 * 1024
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-api-key", "x-auth-token"}
)


class ConfigError(Exception):
    """The configuration is unusable; `str()` is one line naming the key and the problem."""


def _split_list(value: Any) -> Any:
    """Let environment variables give lists as JSON or as comma-separated text."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [item.strip() for item in text.split(",") if item.strip()]


StrList = Annotated[list[str], NoDecode]


def _check_listen(value: str) -> str:
    match = _LISTEN_RE.fullmatch(value)
    if match is None or not 0 <= int(match["port"]) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsSettings(_Section):
    servers: StrList = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1)
    creds: Path | None = None
    user: str | None = None
    password: SecretStr | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    connect_timeout_s: float = Field(default=2.0, gt=0)
    first_connect_timeout_s: float = Field(default=15.0, gt=0)
    reconnect_wait_s: float = Field(default=0.5, gt=0)
    reconnect_wait_max_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=5.0, gt=0)
    drain_timeout_s: float = Field(default=10.0, gt=0)

    _split = field_validator("servers", mode="before")(_split_list)

    @field_validator("servers")
    @classmethod
    def _server_urls(cls, servers: list[str]) -> list[str]:
        for url in servers:
            if not re.fullmatch(r"(nats|tls)://\S+", url):
                raise ValueError(f"expected nats:// or tls:// URL, got {url!r}")
        return servers


class StreamSettings(_Section):
    """Limits of the streams `xregion provision` creates (docs/DESIGN.md §3)."""

    max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    duplicate_window_s: float = Field(default=120.0, ge=120)
    replicas: int | None = Field(default=None, ge=1, le=5)
    max_bytes: int = Field(default=-1, ge=-1)


class BridgeSettings(_Section):
    """The bridge (docs/DESIGN.md §5). Every wait is finite; sizes are bytes, times seconds."""

    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:9180"
    # Bearer token for /metrics and /readyz details (docs/SECURITY.md); /healthz stays open.
    admin_token: SecretStr | None = None
    max_replicated_body_bytes: int = Field(default=8 * _MIB, gt=0)
    # Extra request headers copied into events as Xr-Req-*, on top of the built-in allow-list
    # (Content-Type, Content-Encoding, Idempotency-Key).
    forward_headers: StrList = Field(default_factory=list)
    # Requests handled at once; above it the bridge answers 503 at once (backpressure).
    max_concurrent_requests: int = Field(default=10_000, ge=1)
    # Request bodies buffered at once, over every request (write bodies, replay markers'):
    # beyond it a request is answered 503 `body_budget_exhausted`. Size it to the memory the
    # process may use (deploy/k8s: a third of the pod's limit); at least one whole body.
    max_buffered_body_bytes: int = Field(default=256 * _MIB, gt=0)
    # How long a buffered body may take to arrive in full; past it the answer is 408.
    body_read_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # JetStream acks awaited at once; a write waits for a slot within publish_timeout_s.
    max_inflight_publishes: int = Field(default=1024, ge=1)
    # How long a write waits for its JetStream ack before the event goes to the outbox.
    publish_timeout_s: float = Field(default=2.0, gt=0, le=60)
    # How long a write's version record (KV `xr-versions-<region>`, written once its event
    # is durable, not awaited by the response) may take; past it the write stays unrecorded
    # (counted, logged), never failed.
    version_record_timeout_s: float = Field(default=1.0, gt=0, le=60)
    # Record local writes in the version bucket (replayers here then ack older events as
    # stale). Turn off only in a region no replayer applies events to, or to measure its cost.
    record_local_versions: bool = True
    # Keys whose last version record this process remembers, to skip a KV read per write
    # (services/bridge/versions.py explains why that is safe); 0 reads every time.
    version_cache_keys: int = Field(default=100_000, ge=0, le=10_000_000)
    # Version-record writes are sent in bursts this often (services/bridge/versions.py): a
    # record lands that much later, for less CPU per write on the bridge and NATS. 0: off.
    version_coalesce_s: float = Field(default=0.005, ge=0, le=0.1)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    # Longest silence from the upstream (waiting for the status line, or between body bytes).
    upstream_read_timeout_s: float = Field(default=60.0, gt=0)
    upstream_max_connections: int = Field(default=1024, ge=1)
    upstream_keepalive_s: float = Field(default=30.0, gt=0)
    # The outbox refuses new events beyond this size on disk (the write then fails with 503).
    outbox_max_bytes: int = Field(default=1024 * _MIB, gt=0)
    outbox_batch: int = Field(default=64, ge=1, le=10_000)
    outbox_retry_base_s: float = Field(default=0.2, gt=0)
    outbox_retry_max_s: float = Field(default=10.0, gt=0)
    # At start, how long to drain the outbox before opening the listener (then keep draining).
    start_drain_timeout_s: float = Field(default=10.0, ge=0)
    # On SIGTERM: how long in-flight requests (and their publishes) may take to finish.
    shutdown_timeout_s: float = Field(default=15.0, gt=0)

    _listen = field_validator("listen", "admin_listen")(_check_listen)
    _split = field_validator("forward_headers", mode="before")(_split_list)

    @model_validator(mode="after")
    def _budget_fits_a_body(self) -> Self:
        if self.max_buffered_body_bytes < self.max_replicated_body_bytes:
            raise ValueError(
                "max_buffered_body_bytes must be >= max_replicated_body_bytes "
                "(else a write of the largest allowed body could never be buffered)"
            )
        return self

    def credential_forward_headers(self) -> list[str]:
        """The `forward_headers` that carry credentials: copied into every event, they sit in
        JetStream for the streams' age and reach every target region's service."""
        return [name for name in self.forward_headers if name in _CREDENTIAL_HEADERS]

    @field_validator("forward_headers")
    @classmethod
    def _header_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower().startswith("xr-"):
                raise ValueError(f"{name!r}: Xr-* headers are xregion's own")
        return [name.lower() for name in names]


class BroadcasterSettings(_Section):
    """The broadcaster (docs/DESIGN.md §5). Counts are events, sizes bytes, times seconds.

    Per target region the broadcaster holds a window of events (fetched, not yet acked):
    at most `window_events` and about `window_max_bytes`. `ack_wait_s` and `max_ack_pending`
    are applied to the broadcaster's durable consumers by `xregion provision`; the window must
    fit in `max_ack_pending` (shared by every instance in the region) and a publish must time
    out well within `ack_wait_s`.
    """

    admin_listen: str = "127.0.0.1:9181"
    # Bearer token for /metrics and /readyz details (docs/SECURITY.md); /healthz stays open.
    admin_token: SecretStr | None = None
    # Enough for 40k events/s at 100 ms round trip; 2 instances still fit max_ack_pending.
    window_events: int = Field(default=4096, ge=1, le=100_000)
    window_max_bytes: int = Field(default=64 * _MIB, gt=0)
    fetch_batch: int = Field(default=256, ge=1, le=10_000)
    # Short, so a pause or a shutdown is obeyed within a second (docs/NATS.md §3.1.5).
    fetch_timeout_s: float = Field(default=0.5, gt=0, le=30)
    # Each publish_async future is bounded by this (docs/NATS.md §3.1.1).
    publish_timeout_s: float = Field(default=5.0, gt=0, le=120)
    retry_base_s: float = Field(default=0.1, gt=0)
    retry_max_s: float = Field(default=5.0, gt=0)
    ack_wait_s: float = Field(default=30.0, ge=1, le=3600)
    max_ack_pending: int = Field(default=10_000, ge=1, le=1_000_000)
    canary_interval_s: float = Field(default=5.0, gt=0, le=3600)
    # How often every instance re-reads the pause switches (KV `xr-control-<region>`).
    control_poll_s: float = Field(default=0.25, gt=0, le=10)
    # How often backlog and lag are read from the consumers.
    metrics_poll_s: float = Field(default=2.0, gt=0, le=300)
    # On SIGTERM: how long in-flight publishes may take to finish and be acked.
    shutdown_timeout_s: float = Field(default=10.0, gt=0)

    _listen = field_validator("admin_listen")(_check_listen)

    @model_validator(mode="after")
    def _window_fits(self) -> Self:
        if self.window_events > self.max_ack_pending:
            raise ValueError(
                f"window_events ({self.window_events}) must not exceed max_ack_pending "
                f"({self.max_ack_pending})"
            )
        if max(self.publish_timeout_s, self.fetch_timeout_s) * 2 > self.ack_wait_s:
            raise ValueError("ack_wait_s must be >= 2 x publish_timeout_s and fetch_timeout_s")
        if self.retry_base_s > self.retry_max_s:
            raise ValueError("retry_base_s must not exceed retry_max_s")
        return self


class ReplayerSettings(_Section):
    """The replayer (docs/DESIGN.md §5). Counts are events, times seconds.

    `ack_wait_s` and `max_ack_pending` are applied to the replayer's durable consumer by
    `xregion provision`; `ack_wait_s` is also how long a per-key claim in the versions bucket
    holds off other instances, so one event's handling (every in-process attempt) must fit in
    it twice over.
    """

    admin_listen: str = "127.0.0.1:9182"
    # Bearer token for /metrics and /readyz details (docs/SECURITY.md); /healthz stays open.
    admin_token: SecretStr | None = None
    # Events held at once (being applied, or queued behind an earlier event for their key).
    concurrency: int = Field(default=64, ge=1, le=10_000)
    fetch_batch: int = Field(default=256, ge=1, le=10_000)
    # Short, so a shutdown is obeyed within about a second (docs/NATS.md §3.1.5).
    fetch_timeout_s: float = Field(default=1.0, gt=0, le=30)
    ack_wait_s: float = Field(default=30.0, ge=1, le=3600)
    max_ack_pending: int = Field(default=2_000, ge=1, le=1_000_000)
    upstream_connect_timeout_s: float = Field(default=2.0, gt=0)
    # Per attempt: the whole request and response.
    upstream_timeout_s: float = Field(default=10.0, gt=0)
    upstream_max_connections: int = Field(default=256, ge=1)
    # In-process retries of one delivery (connection errors, timeouts, 429, 5xx).
    retry_attempts: int = Field(default=3, ge=1, le=20)
    retry_total_s: float = Field(default=5.0, gt=0)
    retry_base_s: float = Field(default=0.05, gt=0)
    retry_max_s: float = Field(default=1.0, gt=0)
    # Then redelivery by nak(delay): nak_base_s * 2**(deliveries-1), capped at nak_max_s.
    nak_base_s: float = Field(default=1.0, gt=0)
    nak_max_s: float = Field(default=60.0, gt=0)
    # A retryable event is dead-lettered after this many deliveries or this age.
    max_deliveries: int = Field(default=20, ge=1)
    max_age_s: float = Field(default=24 * 3600.0, gt=0)
    # An event written (by its HLC) longer ago is dead-lettered as `expired`, uncalled: its key's
    # version record and its marker may have expired, so it could roll the key back or apply
    # twice. None: 90 % of streams.max_age_s, the versions bucket's TTL (room for clock skew).
    max_event_age_s: float | None = Field(default=None, gt=0)
    # An event whose HLC is further ahead of this replayer's clock is dead-lettered as
    # `future_hlc`, uncalled: with last-writer-wins it would win its key for good.
    max_event_ahead_s: float = Field(default=60.0, gt=0)
    # How long (by the event's HLC) a change that finds its resource missing here (404 to an
    # `apply` event other than a create) is retried: its create may be on its way from another
    # region. Past it, the event is dead-lettered.
    absent_retry_s: float = Field(default=600.0, ge=0)
    # nak delay while another instance holds the claim on the event's key.
    claim_busy_delay_s: float = Field(default=0.2, gt=0)
    # Keys whose last version record this process remembers, to skip a KV read per event
    # (services/replayer/versions.py explains why that is safe); 0 reads every time.
    version_cache_keys: int = Field(default=100_000, ge=0, le=10_000_000)
    # Acks and version-record writes are sent in bursts this often (one socket write for
    # many; services/replayer/coalesce.py): that much latency per NATS round trip. 0: off.
    coalesce_s: float = Field(default=0.001, ge=0, le=0.1)
    metrics_poll_s: float = Field(default=5.0, gt=0, le=300)
    # On SIGTERM: how long in-flight events may take to finish and be acked.
    shutdown_timeout_s: float = Field(default=15.0, gt=0)

    _listen = field_validator("admin_listen")(_check_listen)

    @model_validator(mode="after")
    def _fits_ack_wait(self) -> Self:
        if 2 * (self.retry_total_s + self.upstream_timeout_s) > self.ack_wait_s:
            raise ValueError("ack_wait_s must be >= 2 x (retry_total_s + upstream_timeout_s)")
        if self.retry_base_s > self.retry_max_s or self.nak_base_s > self.nak_max_s:
            raise ValueError("retry_base_s/nak_base_s must not exceed retry_max_s/nak_max_s")
        return self


class SigningSettings(_Section):
    """docs/DESIGN.md §9. `mode` has no default: turning signing off must be spelled out."""

    mode: Literal["ed25519", "off"]
    key_id: str | None = None  # the bridge's key: signs events
    private_key_file: Path | None = None
    trusted_keys_file: Path | None = None
    # The replayer's own key (signs replay markers); without it the replayer uses key_id's.
    replayer_key_id: str | None = None
    replayer_private_key_file: Path | None = None

    @model_validator(mode="after")
    def _keys_when_signing(self) -> Self:
        if self.mode == "ed25519":
            for name in ("key_id", "private_key_file", "trusted_keys_file"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name} is required when mode = 'ed25519'")
        if (self.replayer_key_id is None) != (self.replayer_private_key_file is None):
            raise ValueError("replayer_key_id and replayer_private_key_file go together")
        return self


def _upper_methods(rules: dict[str, Rule]) -> dict[str, Rule]:
    upper = {method.upper(): rule for method, rule in rules.items()}
    for method in upper:
        if not _METHOD_RE.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
    return upper


def prefix_matches(prefix: str, path: str) -> bool:
    """Segment-boundary prefix match: `/a` matches `/a` and `/a/b`, not `/ab`; a prefix ending
    in `/` matches everything below it (routes, excludes and route rules alike)."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


class ServiceSettings(_Section):
    upstream: str
    routes: StrList = Field(min_length=1)
    replicate: StrList = Field(default_factory=lambda: list(DEFAULT_METHODS))
    exclude: StrList = Field(default_factory=list)
    targets: Literal["all"] | StrList = "all"
    allow_request_targets: bool = False
    key: str = "path"
    # Replication rule per method, over the defaults (PUT, DELETE replace; others apply).
    rules: dict[str, Rule] = Field(default_factory=dict)
    # Per path prefix (longest match wins), rules per method over `rules`.
    route_rules: dict[str, dict[str, Rule]] = Field(default_factory=dict)
    # Where a create names the resource it makes: "json:<field>" keys an `apply` POST to
    # PATH by PATH/<that top-level JSON field>, so the item's later writes share its key.
    create_key: str | None = None

    _split = field_validator("routes", "replicate", "exclude", mode="before")(_split_list)

    def rule_for(self, method: str, path: str) -> Rule:
        """The replication rule of a `method` write to `path` (no query string)."""
        best = ""
        for prefix, by_method in self.route_rules.items():
            if method in by_method and prefix_matches(prefix, path) and len(prefix) > len(best):
                best = prefix
        if best:
            return self.route_rules[best][method]
        return self.rules.get(method) or default_rule(method)

    def effective_rules(self) -> dict[str, Rule]:
        """Method -> rule for every replicated method (for `--check-config`)."""
        return {m: self.rules.get(m) or default_rule(m) for m in self.replicate}

    @field_validator("rules")
    @classmethod
    def _rule_methods(cls, rules: dict[str, Rule]) -> dict[str, Rule]:
        return _upper_methods(rules)

    @field_validator("route_rules")
    @classmethod
    def _route_rule_methods(cls, rules: dict[str, dict[str, Rule]]) -> dict[str, dict[str, Rule]]:
        for prefix in rules:
            if not prefix.startswith("/"):
                raise ValueError(f"route_rules: {prefix!r} must be a path prefix")
        return {prefix: _upper_methods(by_method) for prefix, by_method in rules.items()}

    @field_validator("create_key")
    @classmethod
    def _create_key_form(cls, value: str | None) -> str | None:
        if value is None or (value.startswith("json:") and len(value) > len("json:")):
            return value
        raise ValueError(f"create_key must be 'json:<field>', got {value!r}")

    @field_validator("targets", mode="before")
    @classmethod
    def _targets_list(cls, value: Any) -> Any:
        return value if value == "all" else _split_list(value)

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", value):
            raise ValueError(f"expected an http:// or https:// base URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("routes")
    @classmethod
    def _route_form(cls, routes: list[str]) -> list[str]:
        for route in routes:
            if not (route.startswith("/") or route.startswith("host:")):
                raise ValueError(f"route {route!r} must be a path prefix or 'host:<name>'")
        return routes

    @field_validator("replicate")
    @classmethod
    def _methods(cls, methods: list[str]) -> list[str]:
        upper = [m.upper() for m in methods]
        for method in upper:
            if not _METHOD_RE.fullmatch(method):
                raise ValueError(f"invalid HTTP method {method!r}")
        return upper

    @field_validator("key")
    @classmethod
    def _key_rule(cls, rule: str) -> str:
        if rule == "path" or (rule.startswith("header:") and len(rule) > len("header:")):
            return rule
        try:
            re.compile(rule)
        except re.error as exc:
            raise ValueError(f"key must be 'path', 'header:<name>' or a regex: {exc}") from exc
        return rule


class Settings(BaseSettings):
    """A region stack's configuration. Build it with `load_settings`, once, in `main()`."""

    model_config = SettingsConfigDict(
        env_prefix="XR_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    region: str
    regions: StrList = Field(min_length=1)
    data_dir: Path = Path("/var/lib/xregion")
    nats: NatsSettings = Field(default_factory=NatsSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    bridge: BridgeSettings = Field(default_factory=BridgeSettings)
    broadcaster: BroadcasterSettings = Field(default_factory=BroadcasterSettings)
    replayer: ReplayerSettings = Field(default_factory=ReplayerSettings)
    signing: SigningSettings
    services: dict[str, ServiceSettings] = Field(default_factory=dict)

    _split = field_validator("regions", mode="before")(_split_list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; the environment overrides them.
        return (env_settings, init_settings)

    @field_validator("region")
    @classmethod
    def _region_name(cls, region: str) -> str:
        return validate_region(region)

    @field_validator("regions")
    @classmethod
    def _region_names(cls, regions: list[str]) -> list[str]:
        for region in regions:
            validate_region(region)
        if len(set(regions)) != len(regions):
            raise ValueError("regions must not repeat")
        return regions

    @field_validator("services")
    @classmethod
    def _service_names(cls, services: dict[str, ServiceSettings]) -> dict[str, ServiceSettings]:
        for name in services:
            validate_service(name)
        return services

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.region not in self.regions:
            raise ValueError(f"region {self.region!r} is not listed in regions {self.regions}")
        key_id = self.signing.key_id
        if self.signing.mode == "ed25519" and key_id and not key_belongs_to(key_id, self.region):
            raise ValueError(
                f"signing.key_id {key_id!r} does not name region {self.region!r} "
                f"(expected {self.region!r} or '{self.region}-<suffix>')"
            )
        for name, service in self.services.items():
            if service.targets == "all":
                continue
            unknown = sorted(set(service.targets) - set(self.regions))
            if unknown:
                raise ValueError(f"services.{name}.targets names unknown regions {unknown}")
        return self

    def peer_regions(self) -> list[str]:
        """Every region but this one, in configuration order."""
        return [r for r in self.regions if r != self.region]


def load_settings(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the region file at `path` (or `$XR_CONFIG`), apply `XR_*` overrides, validate.

    Raises ConfigError with a one-line message on any problem.
    """
    env = os.environ if env is None else env
    if path is None:
        path = env.get("XR_CONFIG") or None
    source = str(path) if path is not None else "environment"
    data = _read_toml(Path(path)) if path is not None else {}
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    except (SettingsError, InvalidNameError, ValueError) as exc:
        raise ConfigError(f"{source}: {_one_line(str(exc))}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = _one_line(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{key}: {message}{more}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def redact_userinfo(text: str) -> str:
    """`text` with the userinfo of every URL in it (`//user:password@`) replaced by `***`."""
    return _USERINFO_RE.sub("***@", text)


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain JSON data, secrets replaced by `"***"`."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    password = settings.nats.password
    data["nats"]["password"] = None if password is None else "***"
    data["nats"]["servers"] = [redact_userinfo(url) for url in data["nats"]["servers"]]
    for name, service in settings.services.items():
        data["services"][name]["upstream"] = redact_userinfo(service.upstream)
        # What every replicated method does once defaults and overrides are merged.
        data["services"][name]["rules"] = service.effective_rules()
    return data
