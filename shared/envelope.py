"""The replication event and its NATS codec (docs/DESIGN.md §4).

One event is one NATS message: the payload is the original request body, raw, and the metadata
travels in headers. This module is the only code that knows those header names. `Event` checks
its fields when it is built, so an invalid event cannot be encoded; `decode` checks every header
and names the one at fault.

Errors::

    ValueError
     └── EnvelopeError
          ├── MalformedEventError   a message that is not a valid event (.reason, .header)
          └── EventTooLargeError    headers + payload over the server's max_payload (.size, .limit)

`MalformedEventError.reason` is one of `missing_header`, `duplicate_header` (the same name in two
letter cases), `unknown_header` (an `Xr-` header this version does not know), `bad_header` (a
value that fails validation) and `unsupported_schema`.

NATS headers carry one value per name; nats-py strips values and turns CR/LF into spaces, so
every header value an `Event` holds is required to come through that unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from shared.frames import wire_size
from shared.hlc import HlcStamp, InvalidHlcError
from shared.ids import is_uuid7
from shared.regions import InvalidNameError, validate_region, validate_service

__all__ = [
    "CANARY_SERVICE",
    "HDR_CANARY",
    "HDR_DLQ_AT",
    "HDR_DLQ_ATTEMPTS",
    "HDR_DLQ_ERROR",
    "HDR_DLQ_REASON",
    "HDR_DLQ_STATUS",
    "HDR_DLQ_TARGET",
    "HDR_EVENT_ID",
    "HDR_HLC",
    "HDR_KEY",
    "HDR_METHOD",
    "HDR_MSG_ID",
    "HDR_ORIGIN",
    "HDR_PATH",
    "HDR_REPLAYED_FROM",
    "HDR_REPLAYED_SIG",
    "HDR_REQ_PREFIX",
    "HDR_RULE",
    "HDR_SCHEMA",
    "HDR_SERVICE",
    "HDR_SIG",
    "HDR_TARGETS",
    "HDR_TRACE",
    "HEADER_BUDGET_BYTES",
    "HTTP_IDEMPOTENCY_KEY",
    "HTTP_TRACEPARENT",
    "PASSTHROUGH_PREFIXES",
    "RULES",
    "SCHEMA_VERSION",
    "EnvelopeError",
    "Event",
    "EventTooLargeError",
    "MalformedEventError",
    "Reason",
    "ReqHeaders",
    "Rule",
    "canary_target",
    "check_fits",
    "check_wire_headers",
    "decode",
    "default_rule",
    "encode",
    "max_body_for",
    "new_traceparent",
    "parse_targets",
    "parse_traceparent",
    "req_headers_from",
    "signing_input",
]

HDR_MSG_ID = "Nats-Msg-Id"
HDR_EVENT_ID = "Xr-Event-Id"
HDR_ORIGIN = "Xr-Origin"
HDR_SERVICE = "Xr-Service"
HDR_METHOD = "Xr-Method"
HDR_PATH = "Xr-Path"
HDR_HLC = "Xr-Hlc"
HDR_KEY = "Xr-Key"
# The replication rule of the write (`replace` or `apply`, docs/DESIGN.md "Write rules"):
# carried and signed so that every region decides the same way.
HDR_RULE = "Xr-Rule"
HDR_REQ_PREFIX = "Xr-Req-"
HDR_TRACE = "Xr-Trace"
HDR_TARGETS = "Xr-Targets"
HDR_SCHEMA = "Xr-Schema"
HDR_SIG = "Xr-Sig"
# Not an event header: the HTTP header a replayer adds to the calls it makes, naming the
# event's origin. The bridge proxies such a request without publishing it (no loops).
HDR_REPLAYED_FROM = "Xr-Replayed-From"
# With signing on, the replay marker's signature (shared/signing.py: replay_signing_input).
HDR_REPLAYED_SIG = "Xr-Replayed-Sig"
# Canaries (services/broadcaster/canary.py): every few seconds a broadcaster writes, per target
# region, one event on service CANARY_SERVICE into its own events stream, with HDR_CANARY set
# to that target. It travels the whole path of a write (events stream, broadcaster, gateway,
# replay stream); the target's replayer records its age and never calls a service for it.
# decode() ignores HDR_CANARY (PASSTHROUGH_PREFIXES), so a canary is otherwise a valid event.
HDR_CANARY = "Xr-Canary"
CANARY_SERVICE = "xr-canary"
# Dead letters (shared/dlq.py): the original message plus these headers.
HDR_DLQ_REASON = "Xr-Dlq-Reason"
HDR_DLQ_STATUS = "Xr-Dlq-Status"
HDR_DLQ_ATTEMPTS = "Xr-Dlq-Attempts"
HDR_DLQ_ERROR = "Xr-Dlq-Error"
HDR_DLQ_AT = "Xr-Dlq-At"
# Set by a broadcaster on an event a target region refused for good: where a replay goes.
HDR_DLQ_TARGET = "Xr-Dlq-Target"
# HTTP headers a replayer sets on the calls it makes (docs/DESIGN.md §5).
HTTP_IDEMPOTENCY_KEY = "Idempotency-Key"
HTTP_TRACEPARENT = "traceparent"

SCHEMA_VERSION = 1
# Room kept for headers when the bridge turns the server's max_payload into a body limit.
HEADER_BUDGET_BYTES = 16 * 1024
_SURROGATES = re.compile("[\ud800-\udfff]")
# `Xr-` headers other parts of xregion add to stored messages; decode() ignores them.
PASSTHROUGH_PREFIXES = ("Xr-Dlq-", "Xr-Replayed-", "Xr-Canary")

Rule = Literal["replace", "apply"]
RULES: tuple[Rule, ...] = ("replace", "apply")
# Rules by HTTP method when neither the event nor the configuration names one: a PUT or a
# DELETE sets a resource's whole state, anything else adds to it or changes part of it.
_REPLACE_METHODS = frozenset({"PUT", "DELETE"})

Reason = Literal[
    "missing_header", "duplicate_header", "unknown_header", "bad_header", "unsupported_schema"
]
# Forwarded request headers: (lower-case name, value) pairs sorted by name, one per name.
ReqHeaders = tuple[tuple[str, str], ...]

_FIELD_HEADERS = frozenset(
    h.lower()
    for h in (
        *(HDR_MSG_ID, HDR_EVENT_ID, HDR_ORIGIN, HDR_SERVICE, HDR_METHOD, HDR_PATH),
        *(HDR_HLC, HDR_KEY, HDR_RULE, HDR_TRACE, HDR_TARGETS, HDR_SCHEMA, HDR_SIG),
    )
)
_REQ_PREFIX_LOWER = HDR_REQ_PREFIX.lower()
_PASSTHROUGH_LOWER = tuple(p.lower() for p in PASSTHROUGH_PREFIXES)

_METHOD_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")
_REQ_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
# One leading "/" (never "//", a scheme or a host), then no space, control or surrogate.
_PATH_RE = re.compile(r"/(?!/)[^\x00-\x20\x7f-\x9f\ud800-\udfff]*")
_KEY_BAD_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_VALUE_BAD_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
_SIG_RE = re.compile(r"[!-9;-~]+:[!-~]+")
_TRACE_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_TRACE_ANY_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


class EnvelopeError(ValueError):
    """Base of every error raised by the event codec."""


class MalformedEventError(EnvelopeError):
    """A message or field set that is not a valid event; `header` names the culprit."""

    def __init__(self, reason: Reason, header: str | None, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.header = header


class EventTooLargeError(EnvelopeError):
    """Headers plus payload exceed the NATS server's max_payload."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"event is {size} bytes on the wire (headers + payload), "
            f"over the NATS max_payload of {limit} bytes"
        )
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One replicated write. Every field is validated on construction.

    `req_headers` holds the forwarded request headers as sorted (lower-case name, value) pairs;
    build it with `req_headers_from`. `targets` is None unless the request chose its regions.
    """

    event_id: str
    origin: str
    service: str
    method: str
    path: str
    hlc: HlcStamp
    key: str
    body: bytes
    trace: str
    req_headers: ReqHeaders = ()
    targets: tuple[str, ...] | None = None
    rule: Rule | None = None
    schema: int = SCHEMA_VERSION
    sig: str | None = None

    def __post_init__(self) -> None:
        _check_schema(self.schema)
        _ensure(HDR_EVENT_ID, _check_event_id(self.event_id))
        _ensure(HDR_ORIGIN, _check_region(self.origin))
        _ensure(HDR_SERVICE, _check_service(self.service))
        _ensure(HDR_METHOD, _check_method(self.method))
        _ensure(HDR_PATH, _check_path(self.path))
        _ensure(HDR_KEY, _check_key(self.key))
        _ensure(HDR_TRACE, _check_trace(self.trace))
        _ensure(HDR_TARGETS, _check_targets(self.targets))
        _ensure(HDR_RULE, _check_rule(self.rule))
        _ensure(HDR_SIG, _check_sig(self.sig))
        _check_req_headers(self.req_headers)

    @property
    def effective_rule(self) -> Rule:
        """The rule this event is decided by: its own, else its method's default (an event
        written before events carried a rule)."""
        return self.rule if self.rule is not None else default_rule(self.method)

    @property
    def trace_id(self) -> str:
        """The 32-hex trace id inside `trace` (for log lines)."""
        return self.trace[3:35]


# --- field checks: each returns None when the value is fine, else what is wrong with it ---


def _show(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:64] + "...")


def _clip(message: str) -> str:
    # Names come from the wire; a hostile 100 KiB header must not become a 100 KiB log line.
    return message if len(message) <= 200 else message[:200] + "..."


def _ensure(header: str, problem: str | None) -> None:
    if problem is not None:
        raise MalformedEventError("bad_header", header, f"{header}: {problem}")


def _check_schema(schema: int) -> None:
    if schema != SCHEMA_VERSION:
        raise MalformedEventError(
            "unsupported_schema",
            HDR_SCHEMA,
            f"{HDR_SCHEMA}: unsupported envelope version {schema!r}, this build reads "
            f"{SCHEMA_VERSION}",
        )


def _check_event_id(value: str) -> str | None:
    return None if is_uuid7(value) else f"not a canonical lower-case UUIDv7: {_show(value)}"


def _check_region(value: str) -> str | None:
    try:
        validate_region(value)
    except InvalidNameError as exc:
        return _clip(str(exc))
    return None


def _check_service(value: str) -> str | None:
    try:
        validate_service(value)
    except InvalidNameError as exc:
        return _clip(str(exc))
    return None


def _check_method(value: str) -> str | None:
    if _METHOD_RE.fullmatch(value):
        return None
    return f"not an upper-case HTTP method token: {_show(value)}"


def _check_path(value: str) -> str | None:
    if _PATH_RE.fullmatch(value) and value == value.rstrip():
        return None
    return f"must start with a single '/' and hold no spaces or control characters: {_show(value)}"


def _check_key(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if _KEY_BAD_RE.search(value) or value != value.strip():
        return f"control characters or surrounding whitespace: {_show(value)}"
    return None


def _ids_nonzero(trace_id: str, parent_id: str) -> bool:
    return trace_id.strip("0") != "" and parent_id.strip("0") != ""


def _check_trace(value: str) -> str | None:
    match = _TRACE_RE.fullmatch(value)
    if match and _ids_nonzero(match[1], match[2]):
        return None
    return f"not a W3C traceparent 00-<32 hex>-<16 hex>-<2 hex>: {_show(value)}"


def _check_targets(targets: tuple[str, ...] | None) -> str | None:
    if targets is None:
        return None
    if not targets:
        return "must name at least one region"
    if len(set(targets)) != len(targets):
        return f"names a region twice: {_show(','.join(targets))}"
    problems = (_check_region(t) for t in targets)
    return next((p for p in problems if p is not None), None)


def _check_rule(value: str | None) -> str | None:
    if value is None or value in RULES:
        return None
    return f"expected 'replace' or 'apply', got {_show(str(value))}"


def default_rule(method: str) -> Rule:
    """The rule HTTP semantics give `method` (PUT and DELETE replace, the rest apply)."""
    return "replace" if method in _REPLACE_METHODS else "apply"


def _check_sig(value: str | None) -> str | None:
    if value is None or _SIG_RE.fullmatch(value):
        return None
    return f"expected <key-id>:<signature>, both non-empty, printable ASCII: {_show(value)}"


def _check_header_value(value: str) -> str | None:
    if _VALUE_BAD_RE.search(value):
        return f"control character in value {_show(value)}"
    if value != value.strip():
        return f"leading or trailing whitespace (NATS strips it): {_show(value)}"
    return None


def _check_req_headers(pairs: ReqHeaders) -> None:
    previous = ""
    for name, value in pairs:
        header = _req_header(name)
        if not _REQ_NAME_RE.fullmatch(name):
            _ensure(header, f"header name {_show(name)} is not a lower-case token")
        if name <= previous:
            _ensure(header, "forwarded headers must be sorted by name, one value per name")
        _ensure(header, _check_header_value(value))
        previous = name


@functools.lru_cache(maxsize=512)
def _req_header(name: str) -> str:
    """`content-type` -> `Xr-Req-Content-Type` (HTTP Title-Case; decode lower-cases again)."""
    return HDR_REQ_PREFIX + "-".join(part[:1].upper() + part[1:] for part in name.split("-"))


# --- building blocks for the bridge ---


def req_headers_from(headers: Mapping[str, str]) -> ReqHeaders:
    """Forwarded headers in `Event` form: names lower-cased, sorted, values stripped of OWS.

    A name seen more than once (in another case, or repeated in a multidict such as aiohttp's
    `CIMultiDictProxy`, whose items() yields every value) is joined with ", " per HTTP list
    rules, in the order given.
    """
    merged: dict[str, str] = {}
    for name, raw in headers.items():
        low, value = name.lower(), raw.strip(" \t")
        merged[low] = f"{merged[low]}, {value}" if low in merged else value
    return tuple(sorted(merged.items()))


def canary_target(headers: Mapping[str, str] | None) -> str | None:
    """The region a canary is addressed to (HDR_CANARY, any letter case); None if no canary."""
    if not headers:
        return None
    value = headers.get(HDR_CANARY)
    if value is None:
        wanted = HDR_CANARY.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return None if value is None else value.strip()


def parse_targets(value: str) -> tuple[str, ...]:
    """`"eu-west, ap-south"` -> `("eu-west", "ap-south")`; MalformedEventError if invalid."""
    targets = _split_targets(value)
    _ensure(HDR_TARGETS, _check_targets(targets))
    return targets


def _split_targets(value: str) -> tuple[str, ...]:
    return tuple(part.strip(" \t") for part in value.split(","))


def new_traceparent() -> str:
    """A fresh random W3C traceparent (version 00, not sampled: xregion has no sampler)."""
    while True:
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        if _ids_nonzero(trace_id, parent_id):
            return f"00-{trace_id}-{parent_id}-00"


def parse_traceparent(value: str) -> str | None:
    """A client's traceparent as a version-00 value, or None if it is not a valid one.

    Surrounding whitespace and upper-case hex are tolerated; a future version is read by its
    first four fields, as W3C Trace Context asks; version ff and all-zero ids are invalid.
    """
    match = _TRACE_ANY_RE.fullmatch(value.strip(" \t").lower())
    if match is None or match[1] == "ff" or not _ids_nonzero(match[2], match[3]):
        return None
    if match[1] == "00" and match[5] is not None:
        return None
    return f"00-{match[2]}-{match[3]}-{match[4]}"


# --- codec ---


def encode(event: Event) -> tuple[dict[str, str], bytes]:
    """NATS headers (a fresh dict, safe to mutate) and payload for `event`."""
    headers = {
        HDR_MSG_ID: event.event_id,
        HDR_EVENT_ID: event.event_id,
        HDR_ORIGIN: event.origin,
        HDR_SERVICE: event.service,
        HDR_METHOD: event.method,
        HDR_PATH: event.path,
        HDR_HLC: str(event.hlc),
        HDR_KEY: event.key,
    }
    if event.rule is not None:
        headers[HDR_RULE] = event.rule
    for name, value in event.req_headers:
        headers[_req_header(name)] = value
    headers[HDR_TRACE] = event.trace
    if event.targets is not None:
        headers[HDR_TARGETS] = ",".join(event.targets)
    headers[HDR_SCHEMA] = str(event.schema)
    if event.sig is not None:
        headers[HDR_SIG] = event.sig
    return headers, event.body


def decode(headers: Mapping[str, str] | None, payload: bytes) -> Event:
    """The event carried by a NATS message; MalformedEventError if anything is off.

    Header names match in any letter case. Headers outside `Xr-` (such as the server's
    `Nats-Stream-Source`) and those under PASSTHROUGH_PREFIXES are ignored.
    """
    fields, req = _collect(headers or {})
    schema = _parse_schema(_required(fields, HDR_SCHEMA))
    event = Event(
        schema=schema,
        event_id=_required(fields, HDR_EVENT_ID),
        origin=_required(fields, HDR_ORIGIN),
        service=_required(fields, HDR_SERVICE),
        method=_required(fields, HDR_METHOD),
        path=_required(fields, HDR_PATH),
        hlc=_parse_hlc(_required(fields, HDR_HLC)),
        key=_required(fields, HDR_KEY),
        body=bytes(payload),
        trace=_required(fields, HDR_TRACE),
        req_headers=tuple(sorted(req.items())),
        targets=_optional_targets(fields.get(HDR_TARGETS.lower())),
        rule=fields.get(HDR_RULE.lower()),  # type: ignore[arg-type]  # checked by Event
        sig=fields.get(HDR_SIG.lower()),
    )
    _check_msg_id(fields.get(HDR_MSG_ID.lower()), event.event_id)
    return event


def check_wire_headers(headers: Mapping[str, str]) -> None:
    """Raise MalformedEventError unless `headers` can travel as an event's: within the header
    budget in all, and valid UTF-8. The bridge checks before it forwards a write, so that it
    answers 400 instead of publishing an event every replayer would dead-letter."""
    # str(): nats-py's stream-message reads hand non-ASCII values over as email Header objects.
    texts = {str(name): str(value) for name, value in headers.items()}
    size = sum(len(name) + len(value) for name, value in texts.items())
    if size > HEADER_BUDGET_BYTES:
        largest = max(texts, key=lambda name: len(texts[name]))
        raise MalformedEventError(
            "bad_header",
            largest,
            f"headers total {size} bytes, over {HEADER_BUDGET_BYTES} ({largest}: "
            f"{len(texts[largest])})",
        )
    for name, value in texts.items():
        # U+FFFD is the NATS client's stand-in for bytes that are not UTF-8 on the wire;
        # surrogates are aiohttp's for such bytes in an HTTP header.
        if "\ufffd" in value or _SURROGATES.search(value):
            raise MalformedEventError("bad_header", name, f"{name}: not valid UTF-8")


def _collect(headers: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split headers into known fields and forwarded request headers, keyed in lower case."""
    fields: dict[str, str] = {}
    req: dict[str, str] = {}
    check_wire_headers(headers)
    for name, value in headers.items():
        low = name.lower()
        if low in _FIELD_HEADERS:
            _put(fields, low, name, value)
        elif low.startswith(_REQ_PREFIX_LOWER):
            _put(req, low[len(_REQ_PREFIX_LOWER) :], name, value)
        elif low.startswith("xr-") and not low.startswith(_PASSTHROUGH_LOWER):
            raise MalformedEventError("unknown_header", name, f"{name}: unknown xregion header")
    return fields, req


def _put(into: dict[str, str], key: str, name: str, value: str) -> None:
    if key in into:
        raise MalformedEventError(
            "duplicate_header", name, f"{name}: present more than once (in different cases)"
        )
    into[key] = value


def _required(fields: Mapping[str, str], header: str) -> str:
    value = fields.get(header.lower())
    if value is None:
        raise MalformedEventError("missing_header", header, f"{header}: required header missing")
    return value


def _parse_schema(value: str) -> int:
    if value != str(SCHEMA_VERSION):
        raise MalformedEventError(
            "unsupported_schema",
            HDR_SCHEMA,
            f"{HDR_SCHEMA}: unsupported envelope version {_show(value)}, this build reads "
            f"{SCHEMA_VERSION}",
        )
    return SCHEMA_VERSION


def _parse_hlc(value: str) -> HlcStamp:
    try:
        return HlcStamp.parse(value)
    except InvalidHlcError as exc:
        raise MalformedEventError("bad_header", HDR_HLC, f"{HDR_HLC}: {exc}") from exc


def _optional_targets(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else _split_targets(value)


def _check_msg_id(msg_id: str | None, event_id: str) -> None:
    if msg_id is not None and msg_id != event_id:
        _ensure(HDR_MSG_ID, f"{_show(msg_id)} differs from {HDR_EVENT_ID} {_show(event_id)}")


# --- size and signing ---


def check_fits(headers: Mapping[str, str], payload: bytes, max_payload: int) -> None:
    """Raise EventTooLargeError unless headers + payload fit the server's max_payload.

    Publishing an oversized frame makes the server close the connection for good.
    """
    size = wire_size(headers, payload)
    if size > max_payload:
        raise EventTooLargeError(size, max_payload)


def max_body_for(max_payload: int) -> int:
    """The largest body the bridge should accept for replication (0 if nothing fits)."""
    return max(0, max_payload - HEADER_BUDGET_BYTES)


def signing_input(event: Event) -> bytes:
    """The canonical bytes an event signature covers (everything but `sig` itself).

    UTF-8 text: one `name=value` line, each ending in "\\n", for schema, event-id, origin,
    service, method, path, hlc, key, trace and targets (comma-joined, empty when None), then
    `rule=<rule>` when the event carries one (absent from events written before rules, so
    their signatures still verify; stripping the header from a newer event breaks its), then
    one `req.<name>=<value>` line per forwarded header in name order, then
    `body-sha256=<hex digest of the body>` with no newline after it. Field values cannot
    contain a newline, so the encoding is unambiguous.
    """
    targets = "" if event.targets is None else ",".join(event.targets)
    lines = [
        f"schema={event.schema}",
        f"event-id={event.event_id}",
        f"origin={event.origin}",
        f"service={event.service}",
        f"method={event.method}",
        f"path={event.path}",
        f"hlc={event.hlc}",
        f"key={event.key}",
        f"trace={event.trace}",
        f"targets={targets}",
    ]
    if event.rule is not None:
        lines.append(f"rule={event.rule}")
    lines.extend(f"req.{name}={value}" for name, value in event.req_headers)
    lines.append(f"body-sha256={hashlib.sha256(event.body).hexdigest()}")
    return "\n".join(lines).encode()
