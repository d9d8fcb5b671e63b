"""`xregion dlq list|show|replay|purge`: the dead letters of a region (docs/DESIGN.md §7).

Dead letters live in `XR_DLQ_<region>` (shared/dlq.py). Every action works on a
selection: `--service S`, `--reason X`, `--since T` (ISO-8601 time, or an age such as `90s`,
`30m`, `2h`, `7d`), or one message by `--seq N`. Messages are read one by one with the
stream's message-get API (`next_by_subj`; not the direct form, whose answer would add its
`Nats-Subject`/`Nats-Sequence`/... headers to what `replay` republishes), so no consumer is
created.

* `list`: one table row per dead letter (its `Xr-Dlq-Error`, which ends with what the
  service said for a replayer's `http_<status>` letter, cut to fit the row);
* `show`: every header (the whole `Xr-Dlq-Error`) and a body preview of the selected dead
  letters;
* `replay`: publishes the original event back onto the stream it did not get through (same
  event id, so the service's idempotency and the replayer's version check still hold), then
  deletes the dead letter; progress on stderr. That is the region's own replay stream for a
  replayer's dead letter, and the target region's for an event a target refused
  (`forward_refused`, filed by this region's broadcaster with `Xr-Dlq-Target`); for an event
  this region's own events stream refused (`publish_refused`, filed by its bridge) it is the
  events stream `xr.events.<origin>.<service>`, as a valid event with `Nats-Msg-Id` = its
  event id, and from there it flows through the broadcaster like any other write. Fix what
  made the stream refuse it (its limits, say) first: a replay it refuses again fails, and the
  dead letter stays. `replay` publishes with operator rights, so it replays only what the
  letter's own subject vouches for (`shared.dlq.replay_message`: the reason and target its
  filer could have set, an event of the subject's origin and service, with signing on one
  signed by that origin); any other letter is not replayed and stays, with the reason why;
* `purge`: deletes the selected dead letters; requires `--yes`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.header import Header, decode_header

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from services.xregion.errors import UsageError, XregionError
from services.xregion.ops.connect import connected
from services.xregion.ops.output import iso_utc, iso_utc_text, print_json
from shared.dlq import HDR_DLQ_BODY, NotReplayableError, path_of, replay_message
from shared.envelope import (
    HDR_DLQ_AT,
    HDR_DLQ_ATTEMPTS,
    HDR_DLQ_ERROR,
    HDR_DLQ_REASON,
    HDR_DLQ_STATUS,
    HDR_DLQ_TARGET,
    HDR_EVENT_ID,
)
from shared.regions import dlq_stream, dlq_subject
from shared.settings import Settings
from shared.signing import KeyFileError, Verifier, load_verifier

__all__ = ["Selection", "parse_since", "run_dlq"]

_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PREVIEW_BYTES = 512


@dataclass(frozen=True, slots=True)
class Selection:
    region: str
    service: str | None = None
    reason: str | None = None
    since: dt.datetime | None = None
    seq: int | None = None

    def matches(self, msg: RawStreamMsg) -> bool:
        headers = msg.headers or {}
        if self.reason is not None and headers.get(HDR_DLQ_REASON) != self.reason:
            return False
        return self.since is None or (msg.time is not None and msg.time >= self.since)


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """`2026-11-22T10:00:00Z` or an age (`90s`, `30m`, `2h`, `7d`) → an aware datetime."""
    now = now or dt.datetime.now(dt.UTC)
    match = _AGE_RE.fullmatch(text.strip())
    if match:
        return now - dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: expected an ISO time or an age like 30m") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


async def run_dlq(
    settings: Settings, action: str, selection: Selection, *, yes: bool, as_json: bool = False
) -> int:
    if action == "purge" and not yes:
        raise UsageError("purge deletes dead letters for good: add --yes")
    verifier = _verifier(settings) if action == "replay" else None
    async with connected(settings, "dlq") as conn:
        js = conn.jetstream()
        msgs = [m async for m in _select(js, selection)]
        if action == "replay":
            return await _replay(js, selection, msgs, settings.regions, verifier)
        if action == "list" and as_json:
            return _list_json(selection, msgs)
        return await _ACTIONS[action](js, selection, msgs)


async def _select(js: JetStreamContext, sel: Selection) -> AsyncIterator[RawStreamMsg]:
    stream = dlq_stream(sel.region)
    if sel.seq is not None:
        with contextlib.suppress(NotFoundError):
            msg = _plain(await js.get_msg(stream, seq=sel.seq))
            if sel.matches(msg):
                yield msg
        return
    subject = dlq_subject(sel.region, "*", sel.service or "*")
    seq = 1
    while True:
        try:
            msg = _plain(await js.get_msg(stream, seq=seq, subject=subject, next=True))
        except NotFoundError:
            return
        if sel.matches(msg):
            yield msg
        seq = int(msg.seq or seq) + 1


def _plain(msg: RawStreamMsg) -> RawStreamMsg:
    """`msg` with every header value a `str`. `get_msg` parses headers with the email parser,
    which hands a non-ASCII value (a service's answer in `Xr-Dlq-Error`, say) back as an
    `email.header.Header` holding the raw bytes; they are UTF-8, as NATS headers are."""
    if msg.headers:
        msg.headers = {name: _text(value) for name, value in msg.headers.items()}
    return msg


def _text(value: str | Header) -> str:
    if isinstance(value, str):
        return value
    return "".join(
        part.decode("utf-8", errors="replace") if isinstance(part, bytes) else part
        for part, _charset in decode_header(value)
    )


async def _list(js: JetStreamContext, sel: Selection, msgs: list[RawStreamMsg]) -> int:
    print(f"{'SEQ':>6}  {'AT':<24} {'ORIGIN':<10} {'SERVICE':<12} {'REASON':<18} "
          f"{'STATUS':<6} {'TRIES':>5}  {'EVENT ID':<36}  ERROR")  # fmt: skip
    for msg in msgs:
        h = msg.headers or {}
        origin, service = path_of(msg.subject or "")
        print(
            f"{msg.seq:>6}  {h.get(HDR_DLQ_AT, ''):<24} {origin:<10} {service:<12} "
            f"{h.get(HDR_DLQ_REASON, ''):<18} {h.get(HDR_DLQ_STATUS, ''):<6} "
            f"{h.get(HDR_DLQ_ATTEMPTS, ''):>5}  {h.get(HDR_EVENT_ID, ''):<36}  "
            f"{h.get(HDR_DLQ_ERROR, '')[:80]}"
        )
    print(f"{len(msgs)} dead letter(s) in {dlq_stream(sel.region)}", file=sys.stderr)
    return 0


def _list_json(sel: Selection, msgs: list[RawStreamMsg]) -> int:
    """`dlq list --output json` (its keys: `xregion dlq --help`)."""
    letters = []
    for msg in msgs:
        h = msg.headers or {}
        origin, service = path_of(msg.subject or "")
        letters.append({
            "seq": msg.seq, "stored": iso_utc(msg.time), "at": iso_utc_text(h.get(HDR_DLQ_AT)),
            "origin": origin, "service": service, "reason": h.get(HDR_DLQ_REASON),
            "status": _int(h.get(HDR_DLQ_STATUS)), "attempts": _int(h.get(HDR_DLQ_ATTEMPTS)),
            "event_id": h.get(HDR_EVENT_ID), "target": h.get(HDR_DLQ_TARGET),
            "error": h.get(HDR_DLQ_ERROR),
        })  # fmt: skip
    stream = dlq_stream(sel.region)
    print_json({"region": sel.region, "stream": stream, "dead_letters": letters})
    return 0


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


async def _show(js: JetStreamContext, sel: Selection, msgs: list[RawStreamMsg]) -> int:
    if not msgs:
        raise XregionError("no dead letter matches")
    for msg in msgs:
        data = msg.data or b""
        print(f"seq {msg.seq}  subject {msg.subject}  stored {msg.time}")
        for name, value in sorted((msg.headers or {}).items()):
            print(f"  {name}: {value}")
        preview = data[:_PREVIEW_BYTES].decode("utf-8", errors="replace")
        more = f" ... ({len(data)} bytes)" if len(data) > _PREVIEW_BYTES else ""
        print(f"  body: {preview!r}{more}\n")
    return 0


async def _replay(
    js: JetStreamContext,
    sel: Selection,
    msgs: list[RawStreamMsg],
    regions: list[str],
    verifier: Verifier | None,
) -> int:
    failed = 0
    for done, msg in enumerate(msgs, 1):
        if HDR_DLQ_BODY in (msg.headers or {}):
            failed += 1
            print(f"seq {msg.seq}: not replayed: its body was not kept", file=sys.stderr)
            continue
        try:
            subject, headers, payload = replay_message(
                region=sel.region, subject=msg.subject or "", headers=msg.headers,
                payload=msg.data or b"", regions=regions, verifier=verifier,
            )  # fmt: skip
        except NotReplayableError as exc:
            failed += 1
            print(f"seq {msg.seq}: not replayed: {exc}", file=sys.stderr)
            continue
        try:
            await js.publish(subject, payload, headers=headers)
            await js.delete_msg(dlq_stream(sel.region), int(msg.seq or 0))
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            failed += 1
            print(f"seq {msg.seq}: replay failed: {exc!r}", file=sys.stderr)
        print(f"replayed {done - failed}/{len(msgs)}", file=sys.stderr)
    return 1 if failed else 0


async def _purge(js: JetStreamContext, sel: Selection, msgs: list[RawStreamMsg]) -> int:
    for done, msg in enumerate(msgs, 1):
        await js.delete_msg(dlq_stream(sel.region), int(msg.seq or 0))
        print(f"purged {done}/{len(msgs)}", file=sys.stderr)
    print(f"purged {len(msgs)} dead letter(s)")
    return 0


def _verifier(settings: Settings) -> Verifier | None:
    """The trusted keys events are checked against before a replay (None: signing off)."""
    try:
        return load_verifier(settings.signing, regions=settings.regions)
    except KeyFileError as exc:
        raise UsageError(f"cannot check signatures before replaying: {exc}") from None


_ACTIONS = {"list": _list, "show": _show, "purge": _purge}
