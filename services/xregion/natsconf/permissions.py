"""NATS permissions of each service user: least privilege per role and region (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.xregion.natsconf.topology import REGIONAL_ROLES
from shared.envelope import CANARY_SERVICE
from shared.natsconn import inbox_prefix
from shared.provision import control_bucket, versions_bucket
from shared.regions import (
    broadcast_consumer,
    dlq_stream,
    dlq_subject,
    events_stream,
    events_subject,
    replay_consumer,
    replay_stream,
)

__all__ = [
    "default_user",
    "role_permissions",
]


def _srv_subjects(service: str) -> list[str]:
    """What a `nats.micro` service named `service` subscribes to ($SRV discovery)."""
    return ["$SRV.*", f"$SRV.*.{service}", f"$SRV.*.{service}.*"]


def _pull(stream: str, consumer: str) -> list[str]:
    """Publish subjects to fetch from and ack on one existing durable pull consumer."""
    return [
        f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]


def _kv_stream(bucket: str) -> str:
    """The stream behind KV bucket `bucket` (nats-py's `KV_<bucket>`, also what provision makes)."""
    return f"KV_{bucket}"


def _kv_read_write(bucket: str) -> list[str]:
    """Publish subjects to bind one KV bucket, read its keys and write them (nats-py 2.16).

    * `js.key_value(bucket)`: one stream info request on the bucket's stream;
    * `kv.get(key)`: a direct get of the key's last message, `$JS.API.DIRECT.GET.<stream>.
      <key subject>` (the buckets `xregion provision` makes allow direct gets; `create` also
      reads the key this way when it finds a delete marker);
    * `kv.create/update/put/delete(key)`: a JetStream publish to `$KV.<bucket>.<key>` (create,
      update and delete differ only in headers); the ack comes back on the user's inbox.
    """
    stream = _kv_stream(bucket)
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.$KV.{bucket}.>",
        f"$KV.{bucket}.>",
    ]


def _bridge(region: str, regions: Sequence[str]) -> tuple[list[str], list[str]]:
    stream = events_stream(region)
    pub = [events_subject(region, ">"), "$JS.API.INFO", f"$JS.API.STREAM.INFO.{stream}"]
    # Events its events stream refuses for good are dead-lettered in the region's DLQ, under
    # its own origin only (services/bridge/deadletters.py).
    pub.append(dlq_subject(region, region, ">"))
    # Version records of local writes (services/bridge/versions.py): bind, read, CAS write.
    pub += _kv_read_write(versions_bucket(region))
    return pub, _srv_subjects("xr-bridge")


def _broadcaster(region: str, regions: Sequence[str]) -> tuple[list[str], list[str]]:
    stream = events_stream(region)
    control = control_bucket(region)
    pub = [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        # Canaries go into the region's own events stream (services/broadcaster/canary.py).
        events_subject(region, CANARY_SERVICE),
        # Backlog age: a direct get of the oldest unacked event (services/broadcaster/backlog.py).
        f"$JS.API.DIRECT.GET.{stream}",
        # Events a target refuses for good are dead-lettered here (services/broadcaster/
        # forwarder.py); the replayer files its own under the same prefix.
        dlq_subject(region, "*", ">"),
    ]
    for target in (r for r in regions if r != region):
        pub += _pull(stream, broadcast_consumer(target))
        pub += [f"xr.replay.{target}.{region}.>", f"$JS.API.STREAM.INFO.{replay_stream(target)}"]
        # Its pause switch: a direct get of key `pause.<target>` (services/broadcaster/pause.py
        # polls; it never writes the switches and never watches, which would need a consumer).
        pub.append(f"$JS.API.DIRECT.GET.{_kv_stream(control)}.$KV.{control}.pause.{target}")
    return pub, _srv_subjects("xr-broadcaster")


def _replayer(region: str, regions: Sequence[str]) -> tuple[list[str], list[str]]:
    stream, consumer = replay_stream(region), replay_consumer()
    pub = [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        *_pull(stream, consumer),
        dlq_subject(region, "*", ">"),
        f"$JS.API.STREAM.INFO.{dlq_stream(region)}",
        # Version records and claims (services/replayer/versions.py): bind, read, create,
        # update, delete (releasing a claim on a new key).
        *_kv_read_write(versions_bucket(region)),
    ]
    advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"
    return pub, [advisory, *_srv_subjects("xr-replayer")]


def _admin(regions: Sequence[str]) -> tuple[list[str], list[str]]:
    pub = ["$JS.API.>", "$JS.ACK.>", "$SRV.>", "xr.>"]
    # `xregion pause|resume` put and delete the switches in every region's control bucket
    # (reading them is a direct get, within `$JS.API.>`).
    pub += [f"$KV.{control_bucket(r)}.>" for r in regions]
    return pub, ["$JS.EVENT.>", "xr.>"]


def default_user(role: str, region: str | None) -> str:
    """The user name `nats-conf/prod.toml` gives a role: `<role>-<region>`, or `<role>`."""
    return role if region is None else f"{role}-{region}"


def role_permissions(
    role: str, region: str | None, regions: Sequence[str], *, user: str | None = None
) -> dict[str, Any]:
    """NATS `permissions` for one service user (docs/DESIGN.md §9, least privilege).

    Every role subscribes to its user's own inboxes only, `_INBOX.<user>.>` (replies:
    JetStream acks, API answers, fetched messages; `shared.natsconn.inbox_prefix`, which is
    what the services connect with), so no credential can read another user's replies; and
    has `allow_responses` (to answer `$SRV` requests). `user` defaults to `default_user`.
    Publish rights:

    * bridge (region R): its region's events `xr.events.R.>`; its region's DLQ under its own
      origin `xr.dlq.R.R.>` (events the events stream refuses for good); its region's version
      bucket `xr-versions-R` (bind, direct get of a key, create/update of a key), where it
      records local writes;
    * broadcaster (R): fetch/ack/info on the consumers `xr-broadcast-<T>` of `XR_EVENTS_R`,
      direct gets on `XR_EVENTS_R` (backlog age), its canaries `xr.events.R.xr-canary`, the
      replay subjects `xr.replay.<T>.R.>` of every *other* region T, its region's DLQ
      `xr.dlq.R.*.>` (events a target refuses for good), and a direct get of each of its
      pause switches `pause.<T>` in `xr-control-R` (read only, no watch);
    * replayer (R): fetch/ack/info on `XR_REPLAY_R`'s consumer `xr-replayer`, its DLQ
      `xr.dlq.R.*.>` and that stream's info, and `xr-versions-R` (bind, get, create, update,
      delete: claims and records);
    * provisioner: the JetStream API (streams, KV buckets, consumers);
    * admin (the operator CLI): JetStream API, acks, services API, xregion subjects, and the
      keys of every region's `xr-control-<region>` bucket (`xregion pause|resume`).

    No regional role can touch another region's buckets.
    """
    if role in REGIONAL_ROLES:
        assert region is not None
        build = {"bridge": _bridge, "broadcaster": _broadcaster, "replayer": _replayer}[role]
        pub, sub = build(region, regions)
    elif role == "provisioner":
        pub, sub = ["$JS.API.>"], []
    else:
        pub, sub = _admin(regions)
    inbox = inbox_prefix(user or default_user(role, region)) + ".>"
    return {
        "publish": {"allow": pub},
        "subscribe": {"allow": [inbox, *sub]},
        "allow_responses": True,
    }
