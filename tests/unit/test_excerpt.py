"""The excerpt of a service's answer (services/replayer/excerpt.py): bytes and a content
encoding in, one safe line out."""

from __future__ import annotations

import gzip

from hypothesis import given
from hypothesis import strategies as st

from services.replayer.excerpt import EXCERPT_BYTES, excerpt


def _safe_line(text: str) -> bool:
    """One line, nothing a header or a terminal would take as a control sequence."""
    return text == text.strip() and all(c == " " or c.isprintable() for c in text)


def test_a_json_error_is_kept_as_it_reads() -> None:
    body = b'{"error":"field x is required"}'
    assert excerpt(body, "identity") == '{"error":"field x is required"}'
    assert excerpt(body) == excerpt(body, None) == excerpt(body, " Identity ")


def test_whitespace_is_collapsed_into_one_line() -> None:
    body = b'{\n  "error": "unknown tenant",\r\n\t"tenant": "acme"\n}\n'
    assert excerpt(body) == '{ "error": "unknown tenant", "tenant": "acme" }'


def test_no_body_says_nothing() -> None:
    assert excerpt(b"") == ""
    assert excerpt(b" \r\n\t ") == ""
    assert excerpt(b"", "gzip") == ""


def test_a_long_body_is_cut_to_the_excerpt_size() -> None:
    body = b"a" * 2000
    assert excerpt(body) == "a" * EXCERPT_BYTES
    assert EXCERPT_BYTES == 512


def test_a_character_cut_at_the_end_is_dropped_not_replaced() -> None:
    body = b"a" * (EXCERPT_BYTES - 1) + "é".encode() + b"tail"  # é straddles the cut
    assert excerpt(body) == "a" * (EXCERPT_BYTES - 1)
    head = b"a" * (EXCERPT_BYTES - 1) + "é".encode()[:1]  # a body that broke off mid-character
    assert excerpt(head, size=EXCERPT_BYTES + 40, whole=False) == "a" * (EXCERPT_BYTES - 1)


def test_a_compressed_body_is_described_not_decoded() -> None:
    body = gzip.compress(b'{"error":"nope"}' * 20)
    assert excerpt(body, "gzip") == f"<{len(body)} bytes, gzip>"
    assert excerpt(body, " GZIP ") == f"<{len(body)} bytes, gzip>"
    assert excerpt(b"x" * 100, "br", size=65536, whole=False) == "<65536+ bytes, br>"
    odd = "deflate\r\n\x1b[31m" + "z" * 100  # one line, neutralised, cut to 32 characters
    assert excerpt(b"x", odd) == "<1 bytes, deflate \ufffd[31m" + "z" * 19 + ">"


def test_binary_bodies_are_described_not_dumped() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    assert excerpt(png) == f"<{len(png)} bytes, not text>"
    noise = bytes(range(128, 256)) * 2  # no NUL, but hardly a character of it decodes
    assert excerpt(noise) == f"<{len(noise)} bytes, not text>"
    assert excerpt(b"\x00", size=70000, whole=False) == "<70000+ bytes, not text>"


def test_text_with_a_few_odd_bytes_stays_text_with_them_neutralised() -> None:
    body = b"bad value \xe9t\xe9 for \x1b[2Jfield x\x07"  # Latin-1 and terminal escapes
    assert excerpt(body) == "bad value \ufffdt\ufffd for \ufffd[2Jfield x\ufffd"
    assert excerpt("prix « requis » 日本".encode()) == "prix « requis » 日本"


@given(
    body=st.binary(max_size=3 * EXCERPT_BYTES)
    | st.text(max_size=2 * EXCERPT_BYTES).map(lambda t: t.encode("utf-8", "surrogatepass")),
    encoding=st.none() | st.sampled_from(["identity", "gzip", "br, gzip"]) | st.text(max_size=80),
    extra=st.integers(min_value=0, max_value=1 << 20),
)
def test_any_answer_becomes_one_bounded_safe_line(
    body: bytes, encoding: str | None, extra: int
) -> None:
    out = excerpt(body, encoding, size=len(body) + extra, whole=extra == 0)
    assert len(out) <= EXCERPT_BYTES
    assert _safe_line(out)
    if body and (encoding or "").strip().lower() not in ("", "identity"):
        assert out.startswith("<")
        assert out.endswith(">")


@given(st.text(st.characters(codec="ascii", categories=["L", "N", "P", "S", "Zs"]), max_size=512))
def test_short_printable_text_comes_back_with_only_its_whitespace_collapsed(text: str) -> None:
    assert excerpt(text.encode()) == " ".join(text.split())
