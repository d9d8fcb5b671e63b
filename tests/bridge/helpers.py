"""Helpers for the bridge tests: region files, a bridge in-process or as a real process,
reading what the bridge published, a raw HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDictProxy
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from yarl import URL

from services.bridge.service import Bridge
from services.xregion.local.supercluster import SuperCluster
from shared.envelope import Event, decode
from shared.regions import events_stream, events_subject
from shared.settings import Settings, load_settings
from tests.bridge.upstream_app import TestUpstream
from tests.harness import provisioning
from tests.harness.toml import region_toml
from tests.harness.wait import wait_until

__all__ = [
    "REGION",
    "REGIONS",
    "XREGION",
    "BridgeProcess",
    "Reply",
    "StoredEvent",
    "TcpLink",
    "http_client",
    "provision_region",
    "raw_url",
    "region_file",
    "running_bridge",
    "send",
    "settings_for",
    "stored_events",
    "write_region_file",
]

REGION = "us-east"
REGIONS = ("us-east", "eu-west", "ap-south")
XREGION = Path(sys.executable).parent / "xregion"


def region_file(
    *,
    nats_urls: Sequence[str],
    data_dir: Path,
    services: Mapping[str, Mapping[str, Any]],
    bridge: Mapping[str, Any] | None = None,
    signing: Mapping[str, Any] | None = None,
) -> str:
    """A region TOML for us-east with the given services (signing off unless given)."""
    return region_toml(
        {
            "region": REGION,
            "regions": list(REGIONS),
            "data_dir": str(data_dir),
            "nats": {
                "servers": list(nats_urls),
                "first_connect_timeout_s": 10.0,
                "reconnect_wait_s": 0.1,
                "reconnect_wait_max_s": 0.5,
            },
            "signing": signing or {"mode": "off"},
            "bridge": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", **(bridge or {})},
            "services": services,
        }
    )


def write_region_file(path: Path, **kwargs: Any) -> Settings:
    path.write_text(region_file(**kwargs))
    return load_settings(path)


def service_settings(
    tmp_path: Path, cluster: SuperCluster, upstream: TestUpstream, service: str
) -> Settings:
    """A region file for one bridge in front of `upstream`, routing `/<service>` to it."""
    return write_region_file(
        tmp_path / "region.toml",
        nats_urls=cluster.client_urls(REGION),
        data_dir=tmp_path / "data",
        services={service: {"upstream": upstream.url, "routes": [f"/{service}"]}},
    )


async def provision_region(settings: Settings) -> None:
    """Create the region's streams and consumers (as `xregion provision` does)."""
    await provisioning.provision_region(settings, timeout_s=30)


@contextlib.asynccontextmanager
async def running_bridge(settings: Settings) -> AsyncIterator[Bridge]:
    """A bridge in this process (same code path as `xregion bridge`, minus signals)."""
    async with Bridge(settings) as bridge:
        yield bridge


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    headers: dict[str, str]
    data: bytes

    @property
    def event(self) -> Event:
        return decode(self.headers, self.data)


async def stored_events(js: JetStreamContext, service: str) -> list[StoredEvent]:
    """Every message in the region's events stream on `xr.events.us-east.<service>`."""
    subject = events_subject(REGION, service)
    found: list[StoredEvent] = []
    seq = 1
    while True:
        try:
            msg: RawStreamMsg = await js.get_msg(events_stream(REGION), seq, subject, next=True)
        except NotFoundError:
            return found
        assert msg.seq is not None
        found.append(StoredEvent(msg.seq, dict(msg.headers or {}), bytes(msg.data or b"")))
        seq = msg.seq + 1


@contextlib.asynccontextmanager
async def http_client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that sends what it is given: no decompression, no added headers, no
    redirects followed by default; build URLs with `URL(..., encoded=True)`."""
    async with aiohttp.ClientSession(
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as session:
        yield session


def raw_url(base: str, path_qs: str) -> URL:
    return URL(base + path_qs, encoded=True)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def send(
    http: aiohttp.ClientSession, method: str, base: str, path_qs: str, **kwargs: Any
) -> Reply:
    """One request, its body read to the end (so the connection goes back to the pool)."""
    kwargs.setdefault("allow_redirects", False)
    async with http.request(method, raw_url(base, path_qs), **kwargs) as reply:
        return Reply(reply.status, reply.headers, await reply.read())


class BridgeProcess:
    """`xregion bridge --config F` as a real process; always stopped by its owner."""

    def __init__(self, config: Path, *, listen: str, admin_listen: str, log: Path) -> None:
        self._config = config
        self._env = {
            **os.environ,
            "XR_BRIDGE__LISTEN": listen,
            "XR_BRIDGE__ADMIN_LISTEN": admin_listen,
        }
        self.url = f"http://{listen}"
        self.admin_url = f"http://{admin_listen}"
        self._log_path = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    async def start(self, timeout_s: float = 30) -> None:
        with self._log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(XREGION),
                "--log-format",
                "json",
                "bridge",
                "--config",
                str(self._config),
                env=self._env,
                stdout=log,
                stderr=log,
            )
        await wait_until(self._ready, timeout_s, interval=0.1, message=f"bridge at {self.url}")

    async def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise RuntimeError(f"bridge exited with {self.proc.returncode}: {self.log_text()}")
        try:
            async with httpx.AsyncClient(timeout=1.0) as http:
                reply = await http.get(self.admin_url + "/readyz")
        except httpx.TransportError:
            return False
        return reply.status_code == 200 and reply.json()["status"] == "ok"

    async def kill(self) -> int:
        """SIGKILL and reap: no shutdown code runs."""
        return await self._signal(signal.SIGKILL)

    async def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM (graceful shutdown) and wait for the exit code."""
        return await self._signal(signal.SIGTERM, timeout_s)

    async def exited(self, timeout_s: float = 30) -> int:
        """Wait for the process to end by itself (a signal was sent already); its exit code.
        A second SIGTERM could land after the handlers are gone, in the last moments of exit."""
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def _signal(self, sig: signal.Signals, timeout_s: float = 10) -> int:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc is not None and proc.returncode is not None else 0
        proc.send_signal(sig)
        try:
            return await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise

    async def stop(self) -> None:
        """Whatever state it is in, make sure the process is gone (teardown)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


class TcpLink:
    """A loopback TCP forwarder in front of one address, which a test can cut and restore
    (the bridge's link to NATS going away without the server stopping)."""

    def __init__(self, target: str) -> None:
        url = URL(target)
        self._target = (url.host or "127.0.0.1", url.port or 4222)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self._cut = False
        self.url = ""

    async def __aenter__(self) -> TcpLink:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"nats://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in set(self._relays):
            task.cancel()
        if self._relays:
            await asyncio.wait(set(self._relays))

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until `restore()`."""
        self._cut = True
        for writer in set(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        self._cut = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(source, sink))
            self._relays.add(task)
            task.add_done_callback(self._relays.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
        finally:
            sink.transport.abort()
            self._writers.discard(sink)


def settings_for(
    tmp_path: Path,
    cluster: SuperCluster,
    upstream: TestUpstream,
    service: str,
    *,
    bridge: dict[str, Any] | None = None,
    signing: dict[str, Any] | None = None,
    **options: Any,
) -> Settings:
    """A region file for one bridge with one service `service` in front of `upstream`, routed
    at `/<service>`; `options` go into the service's section."""
    return write_region_file(
        tmp_path / "region.toml",
        nats_urls=cluster.client_urls(REGION),
        data_dir=tmp_path / "data",
        services={service: {"upstream": upstream.url, "routes": [f"/{service}"], **options}},
        bridge=bridge,
        signing=signing,
    )
