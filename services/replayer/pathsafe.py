"""Path safety for replayed calls (DESIGN §9): an event must never make us leave the base URL.

Pure. `check_path(path)` returns the path unchanged when it is safe to append to a configured
base URL, else raises `UnsafePathError`. A path is safe when it, and every percent-decoding of
it (repeated until it no longer changes, so double-encoding is caught), starts with exactly one
`/`, holds no backslash, no control or whitespace character, and no `.` or `..` segment; and
the path itself holds no `#` (a fragment is never sent: the URL parser would cut it off, so
the service would get another path than the one checked; `%23` is a literal and fine).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["UnsafePathError", "check_path"]

_MAX_DECODES = 8
_BAD_CHARS_RE = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# A "." or ".." segment anywhere, query included (a false positive there is a cheap price).
_DOT_SEGMENT_RE = re.compile(r"(^|/)\.{1,2}($|[/?#;])")


class UnsafePathError(ValueError):
    """A path that could leave the base URL or smuggle characters into the request line."""


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
