"""What a service said when it refused a replayed write, in one line. Pure.

`excerpt(body, content_encoding, size=…, whole=…)` turns the head of a response body into the
text a dead letter's `Xr-Dlq-Error` and the `service_answer` log field carry:

* an empty (or all-whitespace) body → `""`;
* a body with a `Content-Encoding` other than identity is not decoded → `<N bytes, gzip>`;
* a body that is not text (a NUL byte, or more than a quarter of its characters undecodable
  as UTF-8 or neither printable nor whitespace) → `<N bytes, not text>`;
* otherwise its first `EXCERPT_BYTES` bytes, decoded as UTF-8 (`errors="replace"`; a character
  cut in two at the end is dropped), with any other control or format character replaced by
  U+FFFD (nothing reaches a header or an operator's terminal as a control sequence) and
  whitespace collapsed to single spaces.

`N` is the body's size as far as it was read (`size`, default `len(body)`), written `N+`
when the body went on (`whole=False`: the replayer reads at most 64 KiB of an answer).
"""

from __future__ import annotations

import codecs

from shared.dlq import one_line

__all__ = ["EXCERPT_BYTES", "excerpt"]

# At most this much of a body is kept: enough for an error message, small enough for a header.
EXCERPT_BYTES = 512
_NOT_TEXT_SHARE = 0.25
_ENCODING_MAX = 32
_IDENTITY = ("", "identity")
_REPLACEMENT = "\ufffd"


def excerpt(
    body: bytes, content_encoding: str | None = None, *, size: int | None = None, whole: bool = True
) -> str:
    """One line (at most `EXCERPT_BYTES` characters) saying what `body` says; see the module."""
    size = max(len(body), size or 0)
    coding = (content_encoding or "").strip().lower()
    if size == 0:
        return ""
    if coding not in _IDENTITY:
        return _described(size, whole, one_line(_printable(coding))[:_ENCODING_MAX])
    head = body[:EXCERPT_BYTES]
    text = _decoded(head, complete=whole and size == len(head))
    if b"\0" in head or _not_text(text):
        return _described(size, whole, "not text")
    return one_line(_printable(text))


def _decoded(head: bytes, *, complete: bool) -> str:
    # Incremental: when the body goes on past `head`, a character cut in two at its end is
    # held back rather than shown as U+FFFD.
    return codecs.getincrementaldecoder("utf-8")("replace").decode(head, final=complete)


def _described(size: int, whole: bool, what: str) -> str:
    return f"<{size}{'' if whole else '+'} bytes, {what}>"


def _not_text(text: str) -> bool:
    bad = sum(1 for c in text if c == _REPLACEMENT or not (c.isprintable() or c.isspace()))
    return bad > len(text) * _NOT_TEXT_SHARE


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() or c.isspace() else _REPLACEMENT for c in text)
