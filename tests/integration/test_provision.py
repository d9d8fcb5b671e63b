"""`xregion provision` against a real 3-region super-cluster: placement, idempotency, and
provisioning while one region is down."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from services.xregion.local.supercluster import SuperCluster
from shared import provision
from shared.natsconn import NatsConnection
from shared.regions import broadcast_consumer, dlq_stream, events_stream, replay_stream
from shared.settings import NatsSettings, Settings, SigningSettings
from tests.harness.fixtures import DEV_REGIONS, MakeSuperCluster
from tests.harness.provisioning import provision_region
from tests.harness.toml import write_region_toml
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration
JS_TRANSIENT = (NoStreamResponseError, ServiceUnavailableError, NatsTimeoutError)


def settings_for(cluster: SuperCluster, region: str, tmp_path: Path) -> Settings:
    return Settings(
        region=region,
        regions=list(DEV_REGIONS),
        data_dir=tmp_path / region,
        nats=NatsSettings(servers=cluster.client_urls(region), first_connect_timeout_s=5),
        signing=SigningSettings(mode="off"),
    )


def region_file(cluster: SuperCluster, region: str, tmp_path: Path) -> Path:
    data = {
        "region": region,
        "regions": list(DEV_REGIONS),
        "data_dir": str(tmp_path),
        "nats": {"servers": cluster.client_urls(region)},
        "signing": {"mode": "off"},
    }
    return write_region_toml(tmp_path / f"{region}.toml", data)


def run_provision(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("xregion", path=str(Path(sys.executable).parent))
    assert exe is not None
    return subprocess.run(
        [exe, "--log-level", "warning", "provision", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )  # fmt: skip


async def test_provision_twice_is_a_no_op(
    make_supercluster: MakeSuperCluster, tmp_path: Path
) -> None:
    cluster = await make_supercluster()
    config = region_file(cluster, "eu-west", tmp_path)

    first = run_provision(config)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == 8, first.stdout  # 3 streams, 2 buckets, 3 consumers

    async with NatsConnection(settings_for(cluster, "eu-west", tmp_path).nats,
                              service="test") as conn:  # fmt: skip
        js = conn.jetstream()
        before = {s: await js.stream_info(s) for s in _streams("eu-west")}
        consumers_before = await js.consumers_info(events_stream("eu-west"))

        second = run_provision(config)
        assert second.returncode == 0, second.stderr
        assert "created" not in second.stdout, second.stdout
        assert "updated" not in second.stdout, second.stdout
        assert second.stdout.count("unchanged") == 8

        for name, info in before.items():
            after = await js.stream_info(name)
            assert after.config == info.config
            assert after.created == info.created
            assert after.cluster is not None
            assert after.cluster.name == "eu-west"
            assert after.config.num_replicas == 1  # one server in the region's cluster
        consumers_after = await js.consumers_info(events_stream("eu-west"))
        assert sorted(c.name for c in consumers_after) == ["xr-broadcast-ap-south",
                                                           "xr-broadcast-us-east"]  # fmt: skip
        assert {c.name: c.created for c in consumers_after} == {
            c.name: c.created for c in consumers_before
        }


async def test_a_recreated_broadcaster_consumer_says_where_it_starts(
    make_supercluster: MakeSuperCluster, tmp_path: Path
) -> None:
    """A broadcaster consumer deleted by mistake is re-created at the stream's first event by
    default (nothing skipped), and provision says how many events that forwards again;
    `--broadcast-start` starts it later instead; later runs leave either position alone."""
    cluster = await make_supercluster()
    config = region_file(cluster, "us-east", tmp_path)
    assert run_provision(config).returncode == 0
    stream, lost = events_stream("us-east"), broadcast_consumer("eu-west")
    async with NatsConnection(settings_for(cluster, "us-east", tmp_path).nats,
                              service="test") as conn:  # fmt: skip
        js = conn.jetstream()

        async def publish(first: int, count: int) -> None:
            for n in range(first, first + count):
                await js.publish("xr.events.us-east.svc", b"x", headers={"Nats-Msg-Id": f"e{n}"})

        await publish(0, 5)
        await js.delete_consumer(stream, lost)
        again = run_provision(config)
        assert again.returncode == 0, again.stderr
        note = f"{stream}/{lost}: starts at the stream's first event: 5 stored events are "
        assert note + "forwarded to eu-west again" in again.stdout, again.stdout
        assert (await js.consumer_info(stream, lost)).num_pending == 5

        await js.delete_consumer(stream, lost)
        start = dt.datetime.now(dt.UTC)
        await publish(5, 3)
        later = run_provision(config, "--broadcast-start", start.isoformat())
        assert later.returncode == 0, later.stderr
        note = f"{stream}/{lost}: starts at {start.isoformat()}: 3 of the 8 stored events are "
        assert note + "forwarded to eu-west, the 5 before that time are not" in later.stdout
        info = await js.consumer_info(stream, lost)
        assert (info.num_pending, info.config.deliver_policy) == (3, DeliverPolicy.BY_START_TIME)
        kept = broadcast_consumer("ap-south")  # not re-created: not moved either
        assert (await js.consumer_info(stream, kept)).num_pending == 8

        unchanged = run_provision(config)  # no flag: the position stays as it was created
        assert unchanged.returncode == 0, unchanged.stderr
        assert "updated" not in unchanged.stdout, unchanged.stdout
        assert "starts at" not in unchanged.stdout
        info = await js.consumer_info(stream, lost)
        assert (info.num_pending, info.config.deliver_policy) == (3, DeliverPolicy.BY_START_TIME)


def test_broadcast_start_must_be_a_time(tmp_path: Path) -> None:
    result = run_provision(tmp_path / "unused.toml", "--broadcast-start", "yesterday")
    assert result.returncode == 2
    assert "'yesterday' is not an ISO 8601 time" in result.stderr


async def test_changed_limits_are_updated_in_place(
    make_supercluster: MakeSuperCluster, tmp_path: Path
) -> None:
    cluster = await make_supercluster(regions=DEV_REGIONS)
    settings = settings_for(cluster, "us-east", tmp_path)
    async with NatsConnection(settings.nats, service="test") as conn:
        js = conn.jetstream()
        await provision.apply(js, provision.plan(settings, 1))
        shorter = settings.model_copy(
            update={"streams": settings.streams.model_copy(update={"max_age_s": 3600.0})}
        )
        results = await provision.apply(js, provision.plan(shorter, 1))
        updated = {r.name for r in results if r.action is provision.Action.UPDATED}
        assert set(_streams("us-east")) <= updated
        assert (await js.stream_info(events_stream("us-east"))).config.max_age == 3600.0


async def test_one_region_down_the_others_still_publish_and_provision(
    make_supercluster: MakeSuperCluster, tmp_path: Path
) -> None:
    cluster = await make_supercluster()
    await cluster.stop_server(next(s.name for s in cluster.servers if s.cluster == "ap-south"))
    for region in ("us-east", "eu-west"):
        settings = settings_for(cluster, region, tmp_path)
        async with NatsConnection(settings.nats, service="test") as conn:
            js = conn.jetstream(timeout_s=2)
            # Meta quorum is 2 of 3; a new leader may need a moment if ap-south led.
            results = await provision_region(
                settings, js=js, interval_s=0.5, ignore=JS_TRANSIENT,
                message=f"provisioning {region} with ap-south down",
            )  # fmt: skip
            assert {r.action for r in results} == {provision.Action.CREATED}
            ack = await wait_until(
                lambda js=js, region=region: js.publish(  # type: ignore[misc]
                    f"xr.events.{region}.catalog", b"{}"
                ),
                30, interval=0.2, ignore=JS_TRANSIENT,
                message=f"publish to {events_stream(region)}",
            )  # fmt: skip
            assert ack.stream == events_stream(region)


def _streams(region: str) -> list[str]:
    return [events_stream(region), replay_stream(region), dlq_stream(region)]
