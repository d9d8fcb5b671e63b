"""NATS messages with headers as nats-py 2.16 puts them on the wire (docs/NATS.md §2.2).

A message with headers travels as one HPUB frame: a control line, the header block
(`NATS/1.0\\r\\n`, one `Name: value\\r\\n` per header, `\\r\\n`), the payload, `\\r\\n`. The
server limits header block plus payload by `max_payload`, while nats-py checks only the
payload; one frame over the limit closes the connection for good, so every publisher here
measures the frame first (`wire_size`).

`header_block` builds the block byte for byte as `Client.publish` does, so a caller that
measures a frame anyway can keep the block and send it as it is (`send_hpub`) instead of
having nats-py encode the headers a second time, on the critical path of a write.

On the way in, `HeaderParsingClient` is nats-py's client with `parse_header_lines` in place
of its own parser: the same dict for every block, in less than half the time for an event's
ASCII headers (nats-py tests each name for whitespace one character at a time, in a
generator), which every service pays per message received.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import nats.errors
from nats.aio.client import Client

__all__ = ["HeaderParsingClient", "header_block", "parse_header_lines", "send_hpub", "wire_size"]

# nats-py 2.16 `Client._send_publish`: names must be RFC 9110 tokens, values lose CR/LF.
_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_HDR_FIXED = len(b"NATS/1.0\r\n") + len(b"\r\n")
_LINE_EXTRA = len(b": ") + len(b"\r\n")
# What bytes.strip() strips (str.strip() strips more: \x1c-\x1f, which nats-py keeps).
_ASCII_SPACE = " \t\n\r\x0b\x0c"
_WHITESPACE_RE = re.compile(r"\s")  # str.isspace()'s characters, as nats-py tests names


def wire_size(headers: Mapping[str, str], payload: bytes) -> int:
    """Bytes nats-py 2.16 sends as HPUB header block plus payload: what max_payload limits.

    Mirrors `Client._send_publish`: names and values are stripped, empty names skipped, CR/LF
    in values become spaces (one byte for one, so the size needs no translation), everything
    is UTF-8. The HPUB control line is not counted (the server limits it separately, by
    max_control_line). ASCII text is counted without encoding it.
    """
    size = _HDR_FIXED + len(payload)
    for name, value in headers.items():
        key = name.strip()
        if key:
            size += _utf8_len(key) + _utf8_len(value.strip()) + _LINE_EXTRA
    return size


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def header_block(headers: Mapping[str, str]) -> bytes:
    """The header block nats-py 2.16 would send for `headers` (`len(block) + len(payload)` is
    `wire_size`). Raises nats.errors.BadHeaderError for a name that is not a token, as the
    client does."""
    lines = ["NATS/1.0"]
    for name, value in headers.items():
        key = name.strip()
        if not key:
            continue  # the client skips a name that strips to nothing
        if not _is_token(key):
            raise nats.errors.BadHeaderError(key)
        text = value.strip()
        if "\r" in text or "\n" in text:
            text = text.translate(_NEWLINES)
        lines.append(f"{key}: {text}")
    lines += ("", "")
    return "\r\n".join(lines).encode()


# The names are few (the codec's own, the allow-listed request headers): checked once each.
@functools.lru_cache(maxsize=4096)
def _is_token(key: str) -> bool:
    return _NAME_RE.fullmatch(key) is not None


async def send_hpub(nc: Client, subject: str, reply: str, block: bytes, payload: bytes) -> None:
    """What `nc.publish(subject, payload, reply=reply, headers=...)` sends, with the header
    block built already (`header_block`).

    It goes through the client's own pending buffer and flusher (`_send_command`,
    `_flush_pending`, private API of the pinned nats-py 2.16, as `Client.publish` uses them),
    so it is ordered with the client's other commands and is buffered across a reconnect the
    same way. The subject and reply are the caller's own, already valid.
    """
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    if not nc.is_connected and (
        nc._max_pending_size <= 0 or len(payload) + nc._pending_data_size > nc._max_pending_size
    ):
        raise nats.errors.OutboundBufferLimitError  # reconnecting, and its buffer is full
    total = len(block) + len(payload)
    control = f"HPUB {subject} {reply} {len(block)} {total}\r\n".encode()
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += len(payload)
    await nc._send_command(b"".join((control, block, payload, b"\r\n")))
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py 2.16 `Client._parse_header_lines`, equal for every input: `Name: value` lines,
    names without whitespace, values stripped. An all-ASCII block (every event's) is decoded
    once; any other goes to nats-py's own parser, so its decoding rules stay its own."""
    if not raw.isascii():
        parsed: dict[str, str] = Client._parse_header_lines(raw)
        return parsed
    out: dict[str, str] = {}
    for line in raw.decode("ascii").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip(_ASCII_SPACE)
        if _WHITESPACE_RE.search(key) is None:
            out[key] = value.strip(_ASCII_SPACE)
    return out


class HeaderParsingClient(Client):
    """nats-py's client, parsing received header blocks with `parse_header_lines`."""

    _parse_header_lines = staticmethod(parse_header_lines)
