"""`provision_region`: what `xregion provision` does for one region, retried until it succeeds.

Right after a super-cluster starts (or a server or a region comes back), JetStream may have no
leader yet or no responders for a moment, so the whole plan is applied again until one pass
goes through, within a deadline (tests/harness/wait.py).
"""

from __future__ import annotations

import contextlib

from nats.js import JetStreamContext

from shared import provision
from shared.natsconn import NatsConnection
from shared.settings import Settings
from tests.harness.wait import wait_until

__all__ = ["provision_region"]


async def provision_region(
    settings: Settings,
    *,
    replicas: int = 1,
    timeout_s: float = 60,
    interval_s: float = 0.2,
    ignore: tuple[type[Exception], ...] = (Exception,),
    js: JetStreamContext | None = None,
    service: str = "test-provision",
    message: str | None = None,
) -> list[provision.Result]:
    """Apply `provision.plan(settings, replicas)` until a pass succeeds; what that pass did.

    Without `js` it connects as `settings.nats` says (so as whichever user that names), with
    the client name `service`. `ignore`: the errors that mean "not yet".
    """
    wanted = provision.plan(settings, replicas)
    async with contextlib.AsyncExitStack() as stack:
        if js is None:
            conn = await stack.enter_async_context(NatsConnection(settings.nats, service=service))
            js = conn.jetstream()
        return await wait_until(
            lambda: provision.apply(js, wanted),
            timeout_s,
            interval=interval_s,
            ignore=ignore,
            message=message or f"region {settings.region} provisioned",
        )
