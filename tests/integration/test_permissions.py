"""The production NATS permissions (`natsconf.role_permissions`, docs/DESIGN.md §9) against the real
services: a 3x1 super-cluster rendered with auth on and the users of `nats-conf/prod.toml`
(no TLS), provisioned by the `provisioner` user, then in every region the bridge, broadcaster
and replayer as real `xregion <service> --config F` processes, each logged in as its own
user, and the operator commands (`xregion pause|resume|dlq`) as `admin`.

What it proves, end to end with permissions on: a write through a bridge is applied in the
other regions (events, replay, acks, version records in `xr-versions-<region>` written by the
bridge and claimed by the replayers), canaries flow, a poisoned event is dead-lettered and
listed, an event a target refuses for good is dead-lettered by the origin's broadcaster, one
its own events stream refuses for good is dead-lettered by the origin's bridge, a pause
written by `admin` into `xr-control-<region>` is obeyed by the broadcaster (which also reads
its backlog and lag), and resume lets the held event through. Nothing is ever refused by the
permissions: no violation in any nats-server log, no NATS error in any service's log or
`xr_nats_errors_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats.errors
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from services.xregion.local.supercluster import SuperCluster, free_ports
from services.xregion.natsconf import Topology
from shared.natsconn import NatsConnection
from shared.regions import events_stream, replay_stream
from shared.settings import Settings, load_settings
from tests.harness.auth import authed_topology, password_var
from tests.harness.fixtures import DEV_REGIONS, MakeSuperCluster
from tests.harness.http import LoopbackApp
from tests.harness.provisioning import provision_region
from tests.harness.toml import write_region_toml
from tests.harness.wait import wait_until
from tests.harness.xregion_procs import FAST_BROADCASTER

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
XREGION = Path(sys.executable).parent / "xregion"
REGIONS = DEV_REGIONS
SERVICES = ("bridge", "broadcaster", "replayer")
SERVICE = "catalog"
ORIGIN, PAUSED_TARGET, OTHER_TARGET = "us-east", "eu-west", "ap-south"
STOP_TIMEOUT_S = 10.0


class Upstream(LoopbackApp):
    """A region's service: records every call; answers 400 to `poison` paths if told to."""

    def __init__(self, *, refuse_poison: bool = False) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        self._refuse_poison = refuse_poison

    def saw(self, path: str) -> bool:
        return any(p == path for _, p in self.calls)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.calls.append((request.method, request.path))
        if self._refuse_poison and "poison" in request.path:
            return web.json_response({"error": "refused"}, status=400)
        return web.json_response({"ok": True, "path": request.path})


def region_toml(cluster: SuperCluster, region: str, upstream: str, workdir: Path) -> Path:
    """The region file (no credentials: each process gets its user from the environment)."""
    bridge, bridge_admin, broadcaster_admin, replayer_admin = free_ports(4)
    nats = {
        "servers": cluster.client_urls(region),
        "first_connect_timeout_s": 10.0,
        "reconnect_wait_s": 0.1,
        "reconnect_wait_max_s": 0.5,
        "request_timeout_s": 2.0,
    }
    replayer = {
        "admin_listen": f"127.0.0.1:{replayer_admin}",
        "fetch_timeout_s": 0.3,
        "ack_wait_s": 4.0,
        "upstream_timeout_s": 1.0,
        "retry_total_s": 0.5,
        "metrics_poll_s": 0.25,
        "shutdown_timeout_s": 5.0,
    }
    data = {
        "region": region,
        "regions": list(REGIONS),
        "data_dir": str(workdir / region),
        "nats": nats,
        "signing": {"mode": "off"},
        "bridge": {"listen": f"127.0.0.1:{bridge}", "admin_listen": f"127.0.0.1:{bridge_admin}"},
        "broadcaster": {"admin_listen": f"127.0.0.1:{broadcaster_admin}", **FAST_BROADCASTER},
        "replayer": replayer,
        "services": {SERVICE: {"upstream": upstream, "routes": [f"/{SERVICE}"]}},
    }
    return write_region_toml(workdir / f"{region}.toml", data)


def as_user(user: str, env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a process logged in as `user` (no other XR_* settings)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XR_")}
    return {**clean, "XR_NATS__USER": user, "XR_NATS__PASSWORD": env[password_var(user)]}


class ServiceProcess:
    """`xregion <service> --config F` as one NATS user; its owner always calls `stop()`."""

    def __init__(self, service: str, settings: Settings, config: Path, log: Path) -> None:
        self.service = service
        self.user = f"{service}-{settings.region}"
        admin_listen = getattr(settings, service).admin_listen
        self.admin_url = f"http://{admin_listen}"
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def spawn(self, env: Mapping[str, str]) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(XREGION), "--log-format", "json", self.service, "--config", str(self.config),
                stdout=out, stderr=out, env=as_user(self.user, env),
            )  # fmt: skip

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def not_ready(self, http: httpx.AsyncClient) -> str | None:
        """None when /readyz says ok, else why not; AssertionError if the process exited."""
        if self.proc is None or self.proc.returncode is not None:
            code = None if self.proc is None else self.proc.returncode
            tail = "\n".join(self.log_text().splitlines()[-8:])
            raise AssertionError(f"{self.user} exited ({code}):\n{tail}")
        try:
            reply = await http.get(self.admin_url + "/readyz")
        except httpx.HTTPError as exc:
            return repr(exc)
        body = reply.json()
        if reply.status_code == 200 and body.get("status") == "ok":
            return None
        return json.dumps(body.get("checks", body))

    async def metrics(self, http: httpx.AsyncClient) -> dict[tuple[str, frozenset[str]], float]:
        """Every sample of /metrics: (name, frozenset of "label=value") -> value."""
        reply = await http.get(self.admin_url + "/metrics")
        reply.raise_for_status()
        return {
            (s.name, frozenset(f"{k}={v}" for k, v in s.labels.items())): s.value
            for family in text_string_to_metric_families(reply.text)
            for s in family.samples
        }

    async def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after the deadline; always reaped. Idempotent."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass
class Stack:
    region: str
    settings: Settings
    config: Path
    upstream: Upstream
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def bridge_url(self) -> str:
        return "http://" + self.settings.bridge.listen


def provisioner_settings(config: Path, env: Mapping[str, str]) -> Settings:
    """The region file's settings, logged in as the provisioner user."""
    data = tomllib.loads(config.read_text())
    data["nats"] |= {"user": "provisioner", "password": env[password_var("provisioner")]}
    return Settings(**data)


async def limit_message_size(settings: Settings, stream: str, max_bytes: int) -> None:
    """Make `stream` refuse messages over `max_bytes` (-1: no limit) (as the provisioner)."""
    async with NatsConnection(settings.nats, service="test-provision") as conn:
        js = conn.jetstream()
        info = await js.stream_info(stream)
        await js.update_stream(dataclasses.replace(info.config, max_msg_size=max_bytes))


async def xregion_as_admin(env: Mapping[str, str], *args: str) -> tuple[int, str]:
    """An operator command as the `admin` user: exit code and stdout + stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(XREGION), "--log-format", "json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**as_user("admin", env), "COLUMNS": "200", "NO_COLOR": "1"},
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def sample(
    metrics: Mapping[tuple[str, frozenset[str]], float], name: str, **labels: str
) -> float | None:
    """The value of the one sample of `name` whose labels include `labels`."""
    wanted = {f"{k}={v}" for k, v in labels.items()}
    found = [v for (n, ls), v in metrics.items() if n == name and wanted <= ls]
    return found[0] if found else None


@contextlib.asynccontextmanager
async def running(stacks: Mapping[str, Stack], env: Mapping[str, str]) -> AsyncIterator[None]:
    """Every service of every region running as its own user; all stopped by PID on exit."""
    processes = [p for s in stacks.values() for p in s.processes.values()]
    try:
        for process in processes:
            await process.spawn(env)
        waiting: dict[str, str] = {}

        async def all_ready() -> bool:
            waiting.clear()
            for process in processes:
                why = await process.not_ready(http)
                if why is not None:
                    waiting[process.user] = why
            return not waiting

        async with httpx.AsyncClient(timeout=2) as http:
            try:
                await wait_until(all_ready, 60, interval=0.2, message="every service ready")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; not ready: {waiting}") from None
        yield
    finally:
        await asyncio.gather(*(p.stop() for p in processes))


def violations(texts: Mapping[str, str]) -> dict[str, list[str]]:
    """Lines mentioning a permissions violation, by source."""
    found = {
        name: [line for line in text.splitlines() if "violation" in line.lower()][:5]
        for name, text in texts.items()
    }
    return {name: lines for name, lines in found.items() if lines}


async def test_every_service_and_operator_command_works_with_prod_permissions(
    make_supercluster: MakeSuperCluster,
    secret_env: Callable[[Topology], dict[str, str]],
    tmp_path: Path,
) -> None:
    topology = authed_topology()
    env = secret_env(topology)
    cluster = await make_supercluster(topology=topology, env=env)
    async with contextlib.AsyncExitStack() as upstreams:
        stacks: dict[str, Stack] = {}
        for region in REGIONS:
            upstream = await upstreams.enter_async_context(
                Upstream(refuse_poison=region == PAUSED_TARGET)
            )
            config = region_toml(cluster, region, upstream.url, tmp_path)
            settings = load_settings(config, env={})
            stack = Stack(region, settings, config, upstream)
            stack.processes = {
                svc: ServiceProcess(svc, settings, config, tmp_path / f"{region}-{svc}.log")
                for svc in SERVICES
            }
            stacks[region] = stack
            await provision_region(
                provisioner_settings(config, env),
                ignore=(nats.errors.Error, TimeoutError),
                message=f"region {region} provisioned by the provisioner user",
            )

        command_output: dict[str, str] = {}
        async with running(stacks, env), httpx.AsyncClient(timeout=10) as http:
            origin, paused, other = stacks[ORIGIN], stacks[PAUSED_TARGET], stacks[OTHER_TARGET]

            async def metric(stack: Stack, service: str, name: str, /, **labels: str) -> float:
                value = sample(await stack.processes[service].metrics(http), name, **labels)
                return 0.0 if value is None else value

            # 1. A write through the bridge is applied in both other regions.
            reply = await http.put(f"{origin.bridge_url}/{SERVICE}/item-1", content=b"one")
            assert reply.status_code == 200, reply.text
            for target in (paused, other):
                await wait_until(
                    functools.partial(target.upstream.saw, f"/{SERVICE}/item-1"), 20,
                    message=f"item-1 applied in {target.region}",
                )  # fmt: skip
            await wait_until(
                lambda: metric(origin, "bridge", "xr_bridge_version_records_total",
                               service=SERVICE, outcome="recorded"), 10,
                message="the bridge recorded the local write in xr-versions-us-east",
            )  # fmt: skip
            for target in (paused, other):
                await wait_until(
                    functools.partial(metric, target, "replayer", "xr_replayer_events_total",
                                      service=SERVICE, outcome="applied"),
                    10, message=f"the {target.region} replayer counted item-1 applied",
                )  # fmt: skip
                await wait_until(
                    functools.partial(metric, target, "replayer",
                                      "xr_replication_canary_age_seconds", origin=ORIGIN),
                    20, message=f"a canary from {ORIGIN} applied in {target.region}",
                )  # fmt: skip

            # 2. A poisoned event is dead-lettered in eu-west (claim released, DLQ written).
            reply = await http.put(f"{origin.bridge_url}/{SERVICE}/poison-1", content=b"x")
            assert reply.status_code == 200, reply.text
            await wait_until(
                lambda: metric(paused, "replayer", "xr_dlq_messages"), 20,
                message="the poisoned event in XR_DLQ_EU_WEST (seen by the replayer)",
            )  # fmt: skip
            code, out = await xregion_as_admin(env, "dlq", "list", "--config", str(paused.config))
            command_output["dlq list"] = out
            assert code == 0, out
            assert "1 dead letter(s) in XR_DLQ_EU_WEST" in out, out

            # 2b. ap-south refuses an event for good: the us-east broadcaster files it in its
            # own region's DLQ (XR_DLQ_US_EAST) and acks it; eu-west gets it all the same.
            provisioner = provisioner_settings(origin.config, env)
            await limit_message_size(provisioner, replay_stream(OTHER_TARGET), 2048)
            reply = await http.put(f"{origin.bridge_url}/{SERVICE}/big-1", content=b"b" * 8192)
            assert reply.status_code == 200, reply.text
            await wait_until(
                lambda: metric(origin, "broadcaster", "xr_broadcaster_forwarded_total",
                               origin=ORIGIN, target=OTHER_TARGET, outcome="dead_lettered"), 20,
                message="big-1 refused by ap-south, dead-lettered by the us-east broadcaster",
            )  # fmt: skip
            await wait_until(
                lambda: paused.upstream.saw(f"/{SERVICE}/big-1"), 20,
                message="big-1 applied in eu-west",
            )  # fmt: skip
            code, out = await xregion_as_admin(env, "dlq", "list", "--config", str(origin.config))
            command_output["dlq list us-east"] = out
            assert code == 0, out
            assert "1 dead letter(s) in XR_DLQ_US_EAST" in out, out

            # 2c. us-east's own events stream refuses an event for good: the bridge files it in
            # XR_DLQ_US_EAST (under its own origin) and answers 503.
            await limit_message_size(provisioner, events_stream(ORIGIN), 2048)
            reply = await http.put(f"{origin.bridge_url}/{SERVICE}/big-2", content=b"b" * 8192)
            assert reply.status_code == 503, reply.text
            assert "XR_DLQ_US_EAST" in reply.json()["detail"], reply.text
            await limit_message_size(provisioner, events_stream(ORIGIN), -1)
            args = ("--config", str(origin.config), "--reason", "publish_refused")
            code, out = await xregion_as_admin(env, "dlq", "list", *args)
            command_output["dlq list publish_refused"] = out
            assert code == 0, out
            assert "1 dead letter(s) in XR_DLQ_US_EAST" in out, out

            # 3. admin pauses every path into eu-west; the us-east broadcaster obeys.
            target_args = ("--config", str(origin.config), "--target", PAUSED_TARGET)
            code, out = await xregion_as_admin(env, "pause", *target_args)
            command_output["pause"] = out
            assert code == 0, out
            assert f"{ORIGIN} -> {PAUSED_TARGET}  paused" in out, out
            assert f"{OTHER_TARGET} -> {PAUSED_TARGET}  paused" in out, out
            await wait_until(
                lambda: metric(origin, "broadcaster", "xr_broadcaster_paused",
                               target=PAUSED_TARGET), 5,
                message="the us-east broadcaster paused eu-west",
            )  # fmt: skip
            reply = await http.put(f"{origin.bridge_url}/{SERVICE}/item-2", content=b"two")
            assert reply.status_code == 200, reply.text
            await wait_until(
                lambda: other.upstream.saw(f"/{SERVICE}/item-2"), 20,
                message="item-2 applied in ap-south (not paused)",
            )  # fmt: skip
            # The backlog monitor reads the held events' age (a direct get on the stream).
            await wait_until(
                lambda: metric(origin, "broadcaster", "xr_broadcaster_lag_seconds",
                               target=PAUSED_TARGET), 10,
                message="a lag for the paused path (consumer info and direct get allowed)",
            )  # fmt: skip
            assert not paused.upstream.saw(f"/{SERVICE}/item-2"), "paused path forwarded"

            # 4. admin resumes; the held event arrives.
            code, out = await xregion_as_admin(env, "resume", *target_args)
            command_output["resume"] = out
            assert code == 0, out
            assert f"{ORIGIN} -> {PAUSED_TARGET}  running" in out, out
            await wait_until(
                lambda: paused.upstream.saw(f"/{SERVICE}/item-2"), 20,
                message="item-2 applied in eu-west after resume",
            )  # fmt: skip

            # 5. No NATS client error anywhere, by metric (services still running).
            for stack in stacks.values():
                for process in stack.processes.values():
                    errors = {
                        labels: value
                        for (name, labels), value in (await process.metrics(http)).items()
                        if name == "xr_nats_errors_total" and value
                    }
                    assert errors == {}, f"{process.user}: xr_nats_errors_total {errors}"

    # 6. Nothing was refused, start to shutdown: server logs, service logs, command output.
    texts = {f"nats-server {s.name}": cluster.log_path(s.name).read_text() for s in cluster.servers}
    texts |= {p.user: p.log_text() for st in stacks.values() for p in st.processes.values()}
    texts |= {f"xregion {name}": out for name, out in command_output.items()}
    assert violations(texts) == {}
    nats_errors = {
        name: [line for line in text.splitlines() if '"nats.error"' in line][:3]
        for name, text in texts.items()
    }
    assert {k: v for k, v in nats_errors.items() if v} == {}
