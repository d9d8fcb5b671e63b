"""`xregion bridge` as a real process: SIGKILL with a non-empty outbox, SIGTERM with a write
in flight, and the start-up failures that must be one clear line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from services.xregion.local.supercluster import SuperCluster, free_ports
from tests.bridge.helpers import (
    REGION,
    XREGION,
    BridgeProcess,
    TcpLink,
    http_client,
    raw_url,
    region_file,
    send,
    stored_events,
)
from tests.bridge.upstream_app import TestUpstream
from tests.harness.keys import make_keys
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FAST_SPOOL = {
    "publish_timeout_s": 0.5,
    "outbox_retry_base_s": 0.05,
    "outbox_retry_max_s": 0.5,
}


def write_config(
    tmp_path: Path, nats_url: str, upstream: TestUpstream, service: str, **bridge: object
) -> Path:
    config = tmp_path / "region.toml"
    config.write_text(
        region_file(
            nats_urls=[nats_url],
            data_dir=tmp_path / "data",
            services={service: {"upstream": upstream.url, "routes": [f"/{service}"]}},
            bridge={**FAST_SPOOL, **bridge},
        )
    )
    return config


def listen_pair() -> tuple[str, str]:
    port, admin = free_ports(2)
    return f"127.0.0.1:{port}", f"127.0.0.1:{admin}"


async def readiness(admin_url: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=2) as http:
        reply = await http.get(admin_url + "/readyz")
    body: dict[str, object] = reply.json()
    return body


@pytest.mark.chaos
async def test_sigkill_with_spooled_events_then_restart_drains_them(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "killed"
    listen, admin = listen_pair()
    async with TcpLink(bridge_cluster.client_urls(REGION)[0]) as link:
        config = write_config(tmp_path, link.url, upstream, service)
        first = BridgeProcess(config, listen=listen, admin_listen=admin, log=tmp_path / "1.log")
        second = BridgeProcess(config, listen=listen, admin_listen=admin, log=tmp_path / "2.log")
        accepted: list[str] = []
        try:
            await first.start()
            async with http_client() as http:

                async def write(i: int) -> None:
                    reply = await send(http, "PUT", first.url, f"/{service}/k/{i}", data=b"%d" % i)
                    assert reply.status == 200
                    accepted.append(reply.headers["Xr-Event-Id"])

                for i in range(5):
                    await write(i)  # published
                link.cut()  # NATS is gone for the bridge, the server keeps running
                for i in range(5, 25):
                    await write(i)  # spooled: still 200, still an event id
            ready = await readiness(first.admin_url)
            assert ready["checks"]["outbox"] == {  # type: ignore[index]
                "status": "degraded",
                "detail": "20 events spooled",
            }
            assert await first.kill() == -9
            link.restore()
            await second.start()  # ready means: connected and the outbox is empty again
        finally:
            await first.stop()
            await second.stop()
    events = await stored_events(js, service)
    ids = [e.event.event_id for e in events]
    assert sorted(ids) == sorted(accepted)  # nothing lost, nothing doubled
    assert len(ids) == len(set(ids)) == 25
    assert [e.data for e in events] == [b"%d" % i for i in range(25)]  # in order
    assert "bridge.outbox.drained" in second.log_text()


async def test_sigterm_finishes_the_write_in_flight_and_exits_zero(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "graceful"
    listen, admin = listen_pair()
    config = write_config(tmp_path, bridge_cluster.client_urls(REGION)[0], upstream, service)
    bridge = BridgeProcess(config, listen=listen, admin_listen=admin, log=tmp_path / "b.log")
    try:
        await bridge.start()
        async with http_client() as http, asyncio.TaskGroup() as tasks:

            async def last_write() -> tuple[int, str]:
                url = raw_url(bridge.url, f"/{service}/gated")
                async with http.post(url, data=b"last words") as reply:
                    await reply.read()
                    return reply.status, reply.headers["Xr-Event-Id"]

            in_flight = tasks.create_task(last_write())
            await wait_until(lambda: any("gated" in c.raw_path for c in upstream.calls), 10)
            assert bridge.proc is not None
            bridge.proc.terminate()  # SIGTERM while the upstream holds the write
            await wait_until(lambda: refuses(listen), 10, message="listener closed")
            upstream.open_gate()
        status, event_id = in_flight.result()
        assert status == 200
        assert await bridge.exited() == 0  # after the one SIGTERM
    finally:
        await bridge.stop()
    [stored] = await stored_events(js, service)
    assert stored.event.event_id == event_id
    assert stored.data == b"last words"
    assert '"bridge.exit"' in bridge.log_text()


async def refuses(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def _run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(XREGION),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def config_without_private_key(tmp_path: Path, upstream: TestUpstream) -> tuple[Path, str]:
    signing = make_keys(tmp_path)
    Path(signing["private_key_file"]).unlink()
    config = tmp_path / "region.toml"
    config.write_text(
        region_file(
            nats_urls=["nats://127.0.0.1:1"],
            data_dir=tmp_path,
            services={"svc": {"upstream": upstream.url, "routes": ["/svc"]}},
            signing=signing,
        )
    )
    return config, signing["private_key_file"]


async def test_a_missing_key_file_is_one_line_and_exit_2(
    upstream: TestUpstream, tmp_path: Path
) -> None:
    config, missing = config_without_private_key(tmp_path, upstream)
    code, err = await _run_cli("bridge", "--config", str(config))
    assert code == 2
    assert (
        err.strip() == f"xregion bridge: signing: {missing}: cannot read: No such file or directory"
    )


async def test_unreachable_nats_at_start_is_one_line_and_exit_1(
    upstream: TestUpstream, tmp_path: Path
) -> None:
    [dead] = free_ports(1)
    config = write_config(tmp_path, f"nats://127.0.0.1:{dead}", upstream, "svc")
    env = {"PATH": "/usr/bin:/bin", "XR_NATS__FIRST_CONNECT_TIMEOUT_S": "1"}
    code, err = await _run_cli("--log-level", "error", "bridge", "--config", str(config), env=env)
    assert code == 1
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"xregion bridge: could not connect to NATS at nats://127.0.0.1:{dead} within 1 s"
    )
