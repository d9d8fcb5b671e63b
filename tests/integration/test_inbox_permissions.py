"""Inboxes per user, and no credentials in connect errors, on a real super-cluster with the
production users (`nats-conf/prod.toml`, auth without TLS).

* Every user subscribes to its own inbox prefix only (`_INBOX.<user>.>`, the prefix
  `shared.natsconn` connects with): the bridge user cannot subscribe to `_INBOX.>` nor to
  another user's inboxes, so it never sees the replies (fetched events, acks) of a replayer,
  while its own requests still get their answers.
* A first connect that fails names the server without the URL's userinfo.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from nats.aio.msg import Msg
from pydantic import SecretStr

from services.xregion.natsconf import Topology
from shared.natsconn import NatsConnectError, NatsConnection
from shared.settings import NatsSettings
from tests.harness.auth import authed_topology, password_var
from tests.harness.fixtures import MakeSuperCluster, NatsConnect
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration]

REGION = "us-east"


async def test_a_user_may_subscribe_to_its_own_inboxes_only(
    make_supercluster: MakeSuperCluster,
    secret_env: Callable[[Topology], dict[str, str]],
    nats_connect: NatsConnect,
) -> None:
    topology = authed_topology()
    env = secret_env(topology)
    cluster = await make_supercluster(topology=topology, env=env)
    urls = cluster.client_urls(REGION)
    bridge, replayer = f"bridge-{REGION}", f"replayer-{REGION}"

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    sniffed: list[str] = []

    async def sniff(msg: Msg) -> None:
        sniffed.append(msg.subject)

    thief = await nats_connect(
        urls, user=bridge, password=env[password_var(bridge)], error_cb=on_error
    )
    await thief.subscribe("_INBOX.>", cb=sniff)
    await thief.subscribe(f"_INBOX.{replayer}.>", cb=sniff)
    await thief.flush()
    await wait_until(
        lambda: sum("permissions violation" in e.lower() for e in errors) >= 2, 10,
        message=f"both inbox subscriptions of {bridge} refused (errors so far: {errors})",
    )  # fmt: skip
    assert all("_inbox" in e.lower() for e in errors), errors

    # The services' own connections still get every reply, each on its user's inbox.
    for user in (bridge, replayer):
        password = SecretStr(env[password_var(user)])
        settings = NatsSettings(
            servers=urls, user=user, password=password, first_connect_timeout_s=10
        )
        async with NatsConnection(settings, service=f"test-{user}") as conn:
            assert conn.nc.new_inbox().startswith(f"_INBOX.{user}.")
            info = await conn.jetstream().account_info()
            assert info is not None
    await thief.flush()
    assert sniffed == []


async def test_a_failed_first_connect_names_no_credentials(
    make_supercluster: MakeSuperCluster, secret_env: Callable[[Topology], dict[str, str]]
) -> None:
    topology = authed_topology()
    env = secret_env(topology)
    cluster = await make_supercluster(topology=topology, env=env)
    secret = "s3cret-in-the-url"
    [url] = cluster.client_urls(REGION)
    with_userinfo = url.replace("nats://", f"nats://bridge-{REGION}:{secret}@")
    settings = NatsSettings(
        servers=[with_userinfo], first_connect_timeout_s=3, reconnect_wait_s=0.1
    )  # the password is wrong: the server refuses it
    conn = NatsConnection(settings, service="test-redact")
    with pytest.raises(NatsConnectError) as raised:
        await conn.connect()
    await conn.aclose()
    message = str(raised.value)
    assert secret not in message, message
    assert f"bridge-{REGION}:" not in message, message
    assert url.removeprefix("nats://") in message, message
