"""Frames at the size limit: a stored message that fits `max_payload` (payload plus headers)
must be forwarded without growing past it, since an oversized frame closes the broadcaster's
NATS connection for good, for every target at once."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext

from services.broadcaster.service import Broadcaster
from services.xregion.local.supercluster import SuperCluster
from shared.natsconn import NatsConnection
from tests.broadcaster.helpers import (
    ORIGIN,
    TARGETS,
    Producer,
    bc_settings,
    count_replay,
    read_replay,
)
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]


async def test_a_malformed_message_at_max_payload_is_forwarded_unchanged(
    cluster: SuperCluster, conn: NatsConnection, js: JetStreamContext
) -> None:
    # No Nats-Msg-Id, no event headers: malformed, forwarded as it is to every peer. Its frame
    # is a few bytes under max_payload, too little room for an added Nats-Msg-Id.
    headers = {"X-Pad": "x"}
    header_block = len(b"NATS/1.0\r\nX-Pad: x\r\n\r\n")
    payload = b"p" * (conn.nc.max_payload - header_block - 8)
    stored = await js.publish(f"xr.events.{ORIGIN}.frames-big", payload, headers=headers)
    after = Producer(js, "frames-after")
    await after.send(3)

    async with Broadcaster(bc_settings(cluster)) as broadcaster:

        async def forwarded() -> bool:
            return all([await count_replay(js, t, "frames-after") == 3 for t in TARGETS])

        await wait_until(forwarded, 20, message="later events forwarded to both targets")
        assert not broadcaster.nats_closed.is_set()

    for target in TARGETS:
        # With no room for a Nats-Msg-Id, a re-send (a slow ack on a busy machine) is stored
        # again: such a message is forwarded at least once, each copy unchanged.
        copies = await read_replay(js, target, "frames-big")
        assert copies, f"forwarded to {target}"
        for copy in copies:
            assert copy.data == payload
            assert copy.headers.get("X-Pad") == "x"
    assert stored.seq > 0
