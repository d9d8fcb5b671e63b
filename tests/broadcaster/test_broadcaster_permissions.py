"""A publish the broadcaster's NATS permissions refuse is a permanent failure: the server drops
it and only says so on the connection (`-ERR 'Permissions Violation for Publish to ...'`), so
without help the publish would time out and be retried for ever, holding the target's path.

Here a super-cluster of its own (3 regions x 1 server, prod's accounts and users) denies the
broadcaster of us-east one replay subject of ap-south: the event for it is dead-lettered in
us-east (`forward_refused`, the error naming the violation), its source is acked, and later
events go on to ap-south and eu-west."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from pydantic import SecretStr
from structlog.testing import capture_logs

from services.broadcaster.forwarder import FORWARD_REFUSED
from services.broadcaster.gate import State
from services.broadcaster.service import Broadcaster
from services.xregion.local.supercluster import SuperCluster
from services.xregion.natsconf import Topology
from services.xregion.natsconf.permissions import role_permissions
from shared.envelope import HDR_DLQ_ERROR, HDR_DLQ_REASON, HDR_DLQ_TARGET, HDR_EVENT_ID
from shared.natsconn import NatsConnection, denied_publish_subject
from shared.regions import (
    broadcast_consumer,
    dlq_stream,
    dlq_subject,
    events_stream,
    replay_subject,
)
from shared.settings import Settings
from tests.broadcaster.helpers import JS_TRANSIENT, ORIGIN, Producer, bc_settings, count_replay
from tests.harness.auth import authed_topology, password_var
from tests.harness.fixtures import MakeSuperCluster
from tests.harness.provisioning import provision_region
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration]

DENYING = "ap-south"
OTHER = "eu-west"
DENIED_SERVICE = "perm-denied"
ALLOWED_SERVICE = "perm-allowed"
DENIED_SUBJECT = replay_subject(DENYING, ORIGIN, DENIED_SERVICE)
# The module, not the function `natsconf.render` the package exports under the same name.
RENDER = importlib.import_module("services.xregion.natsconf.render")


def _denying(subject: str) -> Callable[..., dict[str, Any]]:
    """prod's permissions, except that us-east's broadcaster may not publish to `subject`."""

    def permissions(
        role: str, region: str | None, regions: Sequence[str], *, user: str | None = None
    ) -> dict[str, Any]:
        granted = role_permissions(role, region, regions, user=user)
        if role == "broadcaster" and region == ORIGIN:
            granted["publish"]["deny"] = [subject]
        return granted

    return permissions


def _as_user(settings: Settings, user: str, env: dict[str, str]) -> Settings:
    password = SecretStr(env[password_var(user)])
    nats = settings.nats.model_copy(update={"user": user, "password": password})
    return settings.model_copy(update={"nats": nats})


async def _provision(cluster: SuperCluster, env: dict[str, str]) -> None:
    for region in cluster.regions:
        await provision_region(_as_user(bc_settings(cluster, region), "provisioner", env))


async def _dead_letter(js: JetStreamContext, service: str) -> RawStreamMsg | None:
    try:
        return await js.get_last_msg(dlq_stream(ORIGIN), dlq_subject(ORIGIN, ORIGIN, service))
    except (NotFoundError, *JS_TRANSIENT):
        return None


async def _acked_past(js: JetStreamContext, target: str, seq: int) -> bool:
    info = await js.consumer_info(events_stream(ORIGIN), broadcast_consumer(target))
    return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq


async def _counts_are(js: JetStreamContext, service: str, wanted: dict[str, int]) -> bool:
    return all([await count_replay(js, t, service) == n for t, n in wanted.items()])


def _server_logs(cluster: SuperCluster, region: str) -> str:
    paths: list[Path] = [cluster.log_path(s.name) for s in cluster.servers if s.cluster == region]
    return "\n".join(p.read_text(errors="replace") for p in paths if p.exists())


async def test_a_denied_subject_is_dead_lettered_and_the_path_goes_on(
    make_supercluster: MakeSuperCluster,
    secret_env: Callable[[Topology], dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The rendered server configs carry the deny; the servers enforce it for real.
    monkeypatch.setattr(RENDER, "role_permissions", _denying(DENIED_SUBJECT))
    topology = authed_topology()
    env = secret_env(topology)
    cluster = await make_supercluster(topology=topology, env=env)  # stopped by the fixture
    await _provision(cluster, env)
    admin = _as_user(bc_settings(cluster), "admin", env)
    async with NatsConnection(admin.nats, service="test") as conn:
        js = conn.jetstream()
        denied = Producer(js, DENIED_SERVICE)
        await denied.send(1)
        (event,) = denied.sent
        allowed = Producer(js, ALLOWED_SERVICE)

        with capture_logs() as logs:
            settings = _as_user(bc_settings(cluster), f"broadcaster-{ORIGIN}", env)
            async with Broadcaster(settings) as broadcaster:
                letter = await wait_until(
                    lambda: _dead_letter(js, DENIED_SERVICE), 30, message="dead letter stored"
                )
                await wait_until(
                    lambda: _acked_past(js, DENYING, event.seq), 10, message="source acked"
                )
                # Events after it still go to the target that denied one subject, and to the other.
                await allowed.send(3)
                await wait_until(
                    lambda: _counts_are(js, ALLOWED_SERVICE, {DENYING: 3, OTHER: 3}),
                    20,
                    message="later events reached both targets",
                )
                assert await count_replay(js, OTHER, DENIED_SERVICE) == 1
                assert await count_replay(js, DENYING, DENIED_SERVICE) == 0
                assert broadcaster.forwarders[DENYING].gate.state is State.CLOSED

    assert letter is not None
    headers = letter.headers or {}
    assert headers[HDR_EVENT_ID] == event.event_id
    assert headers[HDR_DLQ_REASON] == FORWARD_REFUSED
    assert headers[HDR_DLQ_TARGET] == DENYING
    assert f"permission denied: publish to {DENIED_SUBJECT}" in headers[HDR_DLQ_ERROR]
    lines = [e for e in logs if e["event"] == "broadcaster.dead_lettered"]
    assert [(e["event_id"], e["target"]) for e in lines] == [(event.event_id, DENYING)]
    # It was the server's permissions that refused it, and the connection reported it.
    violation = f'Publish Violation - Subject "{DENIED_SUBJECT}"'
    assert violation in _server_logs(cluster, ORIGIN)
    reported = [e for e in logs if e["event"] == "nats.error" and DENIED_SUBJECT in e["error"]]
    assert reported


@pytest.mark.parametrize(
    ("text", "subject"),
    [
        # As nats-py 2.16 reports it: lowercased, the outer single quotes stripped.
        (
            'nats: permissions violation for publish to "xr.replay.ap-south.us-east.s"',
            "xr.replay.ap-south.us-east.s",
        ),
        # As the server writes it.
        ("""-ERR 'Permissions Violation for Publish to "a.B.c"'""", "a.B.c"),
        ("nats: permissions violation for publish to 'a.b'", "a.b"),
        ("nats: permissions violation for publish to a.b.>", "a.b.>"),
        ('nats: permissions violation for publish to "a.\\"q\\".b"', 'a."q".b'),
        ('nats: permissions violation for publish to "a.\\u00e9"', "a.\u00e9"),
        ('nats: permissions violation for publish to "a.\\xff"', "a.\\xff"),
        ('nats: permissions violation for publish with reply of "_INBOX.x.1"', None),
        ('nats: permissions violation for subscription to "_INBOX.>"', None),
        ("nats: permissions violation for publish to", None),
        ('nats: permissions violation for publish to ""', None),
        ("nats: maximum payload violation", None),
    ],
)
def test_the_denied_subject_is_read_from_the_error_text(text: str, subject: str | None) -> None:
    assert denied_publish_subject(text) == subject
