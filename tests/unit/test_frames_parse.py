"""Received header blocks: `parse_header_lines` gives nats-py 2.16's dict for every block,
and the services' client (`HeaderParsingClient`) uses it on a real server's messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from shared.envelope import encode
from shared.frames import HeaderParsingClient, header_block, parse_header_lines
from shared.natsconn import NatsConnection
from shared.settings import NatsSettings
from tests.harness.fixtures import MakeSuperCluster
from tests.replayer.helpers import make_event

# The characters where parsers differ: separators, every kind of ASCII whitespace (\x1c-\x1f
# count as whitespace for str but not for bytes), a non-ASCII letter and a non-ASCII space.
_TRICKY = ":: \t\r\n\x0b\x0c\x1c\x1d\x1e\x1f\x00aZ-_é\u00a0\u2003"
_LINE = st.text(alphabet=_TRICKY, max_size=12)


def _nats_py(raw: bytes) -> dict[str, str]:
    parsed: dict[str, str] = Client._parse_header_lines(raw)
    return parsed


@given(st.binary(max_size=200))
def test_any_bytes_parse_as_nats_py_parses_them(raw: bytes) -> None:
    assert parse_header_lines(raw) == _nats_py(raw)


@given(st.lists(_LINE, max_size=8), st.sampled_from(["ascii", "utf-8"]))
def test_header_lines_with_edge_characters_parse_as_nats_py_parses_them(
    lines: list[str], encoding: str
) -> None:
    raw = "\r\n".join(lines).encode(encoding, "replace") + b"\r\n\r\n"
    assert parse_header_lines(raw) == _nats_py(raw)


def test_an_events_header_block_parses_back_to_its_headers() -> None:
    headers, _ = encode(make_event("/configs/k?v=1"))
    raw = header_block(headers)[len(b"NATS/1.0\r\n") :]
    assert parse_header_lines(raw) == headers


@pytest.mark.integration
async def test_the_services_client_reads_headers_from_a_real_server(
    make_supercluster: MakeSuperCluster,
) -> None:
    cluster = await make_supercluster()
    settings = NatsSettings(servers=cluster.client_urls("us-east"), first_connect_timeout_s=10)
    headers, payload = encode(make_event("/configs/k?v=1"))
    headers["X-Odd"] = "  spaced value\t"
    async with NatsConnection(settings, service="test-headers") as conn:
        assert isinstance(conn.nc, HeaderParsingClient)
        sub = await conn.nc.subscribe("headers.check")
        await conn.nc.publish("headers.check", payload, headers=headers)
        msg = await sub.next_msg(timeout=5)
    assert msg.headers == {**headers, "X-Odd": "spaced value"}
    assert msg.data == payload
