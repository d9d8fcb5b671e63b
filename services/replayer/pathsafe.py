"""Path safety for replayed calls (docs/DESIGN.md §9): an event must never make us leave the
base URL.

Pure. `request_target(path)` is what a replayed call sends for an event's `Xr-Path`: every
non-ASCII character percent-encoded as UTF-8 (RFC 3987 §3.1; a request line is ASCII, and
strict HTTP parsers, aiohttp's among them, answer raw bytes with 400), every ASCII character,
percent-escapes included, kept exactly as it is, so a service sees the escapes the origin's
service saw, and decoding gives the same text as decoding the event's path. That form is then
checked: `check_path(path)` returns the path unchanged when it is safe to append to a
configured base URL, else raises `UnsafePathError`.

A path is safe when it, and every percent-decoding of it (repeated until it no longer
changes, so double-encoding is caught), starts with exactly one `/`, holds no backslash, no
control or whitespace character, and no `.` or `..` segment; and the path itself holds no `#`
(a fragment is never sent: the URL parser would cut it off, so the service would get another
path than the one checked; `%23` is a literal and fine).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

__all__ = ["UnsafePathError", "check_path", "percent_encode_non_ascii", "request_target"]

_MAX_DECODES = 8
_NON_ASCII_RE = re.compile(r"[^\x00-\x7f]+")
_BAD_CHARS_RE = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# A "." or ".." segment anywhere, query included (a false positive there is a cheap price).
_DOT_SEGMENT_RE = re.compile(r"(^|/)\.{1,2}($|[/?#;])")


class UnsafePathError(ValueError):
    """A path that could leave the base URL or smuggle characters into the request line."""


def request_target(path: str) -> str:
    """The checked request target for an event's path (see the module docstring), or raise."""
    try:
        target = percent_encode_non_ascii(path)
    except UnicodeEncodeError:
        raise UnsafePathError(f"path {path[:80]!r}: holds a lone surrogate") from None
    return check_path(target)


def percent_encode_non_ascii(path: str) -> str:
    """`path` with each run of non-ASCII characters percent-encoded as UTF-8, the rest as is.

    Encoding only what was raw (never re-quoting `%`) keeps existing escapes byte for byte,
    and one percent-decoding of the result equals one of `path`: the checks that follow
    see the same decoded text. UnicodeEncodeError for a lone surrogate.
    """
    return _NON_ASCII_RE.sub(lambda run: quote(run[0], safe="", errors="strict"), path)


def check_path(path: str) -> str:
    """`path` if safe to append to a base URL (see the module docstring), else raise."""
    if "#" in path:
        raise UnsafePathError(f"path {path[:80]!r}: holds a fragment ('#')")
    text = path
    for _ in range(_MAX_DECODES):
        _check_once(text, path)
        try:
            decoded = unquote(text, errors="strict")
        except UnicodeDecodeError:
            raise UnsafePathError(f"path {path[:80]!r}: percent-encodes invalid UTF-8") from None
        if decoded == text:
            return path
        text = decoded
    raise UnsafePathError(f"path {path[:80]!r}: too many layers of percent-encoding")


def _check_once(text: str, original: str) -> None:
    problem = _problem(text)
    if problem is not None:
        raise UnsafePathError(f"path {original[:80]!r}: {problem}")


def _problem(text: str) -> str | None:
    if _SCHEME_RE.match(text):
        return "has a scheme"
    if not text.startswith("/") or text.startswith("//"):
        return "must start with a single '/'"
    if _BAD_CHARS_RE.search(text):
        return "holds a backslash, a space or a control character"
    if _DOT_SEGMENT_RE.search(text):
        return "holds a '.' or '..' segment"
    return None
