"""`xregion up` and `xregion demo`: a whole multi-region deployment on this machine.

`up` renders the dev topology, boots the NATS super-cluster, provisions every region, starts
every region's stack (bridge, broadcaster, replayer and the demo service, as separate
supervised processes; `services/xregion/local/stack.py`), waits until all are ready, prints where
everything is and writes the same as JSON to the state file, then runs until Ctrl-C or
SIGTERM and stops everything in order. `demo` does the same, sends traffic through the
bridges and prints a convergence verdict (`services/xregion/local/demo.py`), then stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js.errors import APIError
from rich.console import Console
from rich.table import Table

from services.xregion.errors import UsageError, XregionError
from services.xregion.local import prometheus
from services.xregion.local.demo import run_demo_traffic
from services.xregion.local.stack import RegionStack, plan_stacks, write_stack_files
from services.xregion.local.supercluster import (
    ServerHealth,
    SuperCluster,
    SuperClusterError,
    free_ports,
    with_free_ports,
)
from services.xregion.local.supervisor import ProcessSpec, Supervisor, SupervisorError
from services.xregion.natsconf import TopologyError, build_topology
from shared import provision
from shared.lifecycle import until_signalled
from shared.natsconn import NatsConnectError, NatsConnection
from shared.regions import InvalidNameError, validate_region
from shared.settings import NatsSettings, Settings, SigningSettings

__all__ = ["PROMETHEUS_PORT_OFFSET", "UpOptions", "hold_workdir", "run_up"]

console = Console(stderr=True)
if not console.is_terminal:
    console.width = max(console.width, 150)  # logs and CI: keep URLs whole in the tables
_READY_TIMEOUT_S = 60.0
# The port plan's NATS servers start at N+11 and the stacks at N+410: N+9 is free.
PROMETHEUS_PORT_OFFSET = 9


@dataclass(frozen=True, slots=True)
class UpOptions:
    """What `xregion up` and `demo` run: the regions, the port plan and where files go."""

    regions: Sequence[str] = ("us-east", "eu-west", "ap-south")
    servers_per_region: int = 1
    base_port: int = 14000  # 0: any free ports
    workdir: Path = Path(".xregion")
    state_file: Path | None = None  # None: WORKDIR/state.json
    prometheus: bool = False


async def run_up(options: UpOptions, *, stay: bool) -> int:
    """Run the deployment until a signal (`stay`) or through the demo traffic; the exit code."""
    regions = _regions(options.regions)
    workdir = options.workdir.resolve()
    with hold_workdir(workdir):
        return await _up_in(workdir, regions, options, stay=stay)


@contextlib.contextmanager
def hold_workdir(workdir: Path) -> Iterator[None]:
    """Hold `<workdir>/lock` so a second `up` or `demo` cannot wipe or reuse a live workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise UsageError(
                f"{workdir} is in use by another `xregion up` or `demo` (pid {holder}); "
                "stop it or pass --workdir"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield  # the lock goes with the file's close (or the process)


async def _up_in(workdir: Path, regions: list[str], options: UpOptions, *, stay: bool) -> int:
    if not stay:  # a demo starts from nothing
        for part in ("data", "stacks", "logs", "prometheus"):
            shutil.rmtree(workdir / part, ignore_errors=True)
    try:
        topology = build_topology(
            regions,
            servers_per_region=options.servers_per_region,
            base_port=options.base_port or 14000,
        )
    except TopologyError as exc:
        raise UsageError(str(exc)) from None
    if options.base_port == 0:
        topology = with_free_ports(topology)
    cluster = SuperCluster(topology, workdir)
    try:
        return await _run(cluster, regions, options, workdir, stay=stay)
    except (SuperClusterError, NatsConnectError, SupervisorError) as exc:
        raise XregionError(str(exc)) from None
    finally:
        with console.status("stopping the super-cluster"):
            await cluster.stop()


async def _run(
    cluster: SuperCluster,
    regions: list[str],
    options: UpOptions,
    workdir: Path,
    *,
    stay: bool,
) -> int:
    with step("starting NATS", f"{len(cluster.servers)} nats-server processes up, gateways joined"):
        await cluster.start(timeout_s=90)
    with step("provisioning", f"{len(regions)} regions provisioned (streams, KV, consumers)"):
        for region in regions:
            await _provision(cluster, region, regions, workdir)
    rows = await cluster.health()
    healthy, verdict = _verdict(rows, regions)
    if not healthy:
        console.print(_health_table(rows))
        console.print(verdict, style="bold red")
        return 1
    console.print(verdict, style="green")
    stacks = plan_stacks(
        regions,
        base_port=options.base_port,
        workdir=workdir,
        nats={r: cluster.client_urls(r) for r in regions},
        nats_monitor={r: cluster.monitor_urls(r) for r in regions},
    )
    write_stack_files(stacks, workdir)
    specs = [spec for s in stacks for spec in s.processes(workdir / "logs", _child_env())]
    monitor = _prometheus(options, stacks, workdir)
    if monitor is not None:
        specs.append(monitor[0])
    extra = {"prometheus": monitor[1]} if monitor is not None else {}
    state_file = options.state_file or workdir / "state.json"
    supervisor = Supervisor(
        specs,
        cwd=workdir,
        on_restart=lambda _: _write_state(state_file, workdir, stacks, supervisor, extra),
    )
    async with supervisor:
        with step("starting the region stacks", f"{len(specs)} service processes ready"):
            await supervisor.start()
            await supervisor.wait_ready(_READY_TIMEOUT_S)
        console.print(_stacks_table(stacks))
        if monitor is not None:
            console.print(f"Prometheus: {monitor[1]} (scrapes every process, evaluates the alerts)")
        _write_state(state_file, workdir, stacks, supervisor, extra)
        if stay:
            console.print(
                f"up: {len(regions)} regions, {len(specs)} processes; state in {state_file}, "
                f"logs in {workdir / 'logs'}; Ctrl-C or SIGTERM stops everything"
            )
            await until_signalled(lambda stop: stop())
            code = 0
        else:
            code = await run_demo_traffic(stacks, console)
        with console.status("stopping the region stacks"):
            await supervisor.stop()
    return code


@contextlib.contextmanager
def step(doing: str, done: str) -> Iterator[None]:
    """A spinner while the step runs (on a terminal), then one line saying it is done."""
    started = time.monotonic()
    with console.status(f"{doing} …"):
        yield
    console.print(f"[green]✓[/] {done} [dim]({time.monotonic() - started:.1f} s)[/]")


def _child_env() -> dict[str, str]:
    """The services' environment: ours, minus a region file that would not be theirs."""
    env = {k: v for k, v in os.environ.items() if k != "XR_CONFIG"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _regions(names: Sequence[str]) -> list[str]:
    regions = list(names)
    try:
        for region in regions:
            validate_region(region)
    except InvalidNameError as exc:
        raise UsageError(str(exc)) from None
    if len(regions) < 1 or len(set(regions)) != len(regions):
        raise UsageError("--regions needs distinct region names")
    return regions


def region_settings(
    cluster: SuperCluster, region: str, regions: list[str], workdir: Path
) -> Settings:
    """Enough of a region file to provision the region."""
    return Settings(
        region=region,
        regions=regions,
        data_dir=workdir / "stacks" / region / "data",
        nats=NatsSettings(servers=cluster.client_urls(region)),
        signing=SigningSettings(mode="off"),
    )


async def _provision(cluster: SuperCluster, region: str, regions: list[str], workdir: Path) -> None:
    settings = region_settings(cluster, region, regions, workdir)
    replicas = provision.replicas_for(len(cluster.client_urls(region)))
    try:
        async with NatsConnection(settings.nats, service="provision") as conn:
            await provision.apply(conn.jetstream(), provision.plan(settings, replicas))
    except APIError as exc:
        raise XregionError(
            f"provisioning {region}: {exc.description} (err {exc.err_code})"
        ) from None


def _health_table(rows: list[ServerHealth]) -> Table:
    clusters = {row.cluster for row in rows}
    table = Table(title="NATS super-cluster")
    for column in ("server", "region", "healthz", "gateways up", "meta leader", "jetstream"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            row.name,
            row.cluster,
            row.healthz,
            f"{len(row.gateways)}/{len(clusters) - 1}",
            row.meta_leader or "-",
            "ok" if row.jetstream_ok else "unavailable",
        )
    return table


def _verdict(rows: list[ServerHealth], regions: list[str]) -> tuple[bool, str]:
    clusters = {row.cluster for row in rows}
    leaders = {row.meta_leader for row in rows}
    healthy = (
        all(
            row.healthz == "ok" and row.jetstream_ok and len(row.gateways) == len(clusters) - 1
            for row in rows
        )
        and len(leaders) == 1
        and None not in leaders
    )
    if not healthy:
        return False, "NATS NOT healthy: see the table above and the logs under the workdir"
    return True, (
        f"NATS healthy: {len(regions)} regions provisioned, {len(rows)} servers, "
        f"every gateway up, meta leader {leaders.pop()}"
    )


def _stacks_table(stacks: list[RegionStack]) -> Table:
    table = Table(title="region stacks (all ready)")
    for column in ("region", "bridge", "admin: bridge / broadcaster / replayer", "NATS monitor"):
        table.add_column(column, no_wrap=True)
    for stack in stacks:
        admin = stack.admin_urls()
        table.add_row(
            stack.region,
            stack.bridge_url,
            " ".join(admin[s].removeprefix("http://") for s in admin),
            " ".join(stack.nats_monitor),
        )
    return table


def _prometheus(
    options: UpOptions, stacks: list[RegionStack], workdir: Path
) -> tuple[ProcessSpec, str] | None:
    """With `--prometheus`: the supervised Prometheus process and its URL."""
    if not options.prometheus:
        return None
    executable = prometheus.binary()
    if executable is None:
        raise UsageError(
            "--prometheus: no `prometheus` on PATH (Debian: apt-get install prometheus)"
        )
    port = options.base_port + PROMETHEUS_PORT_OFFSET if options.base_port else free_ports(1)[0]
    directory = workdir / "prometheus"
    prometheus.write_files(directory, stacks)
    spec = prometheus.process_spec(executable, directory, port, workdir / "logs")
    return spec, prometheus.url(port)


def _write_state(
    path: Path,
    workdir: Path,
    stacks: list[RegionStack],
    supervisor: Supervisor,
    extra: dict[str, str],
) -> None:
    state: dict[str, Any] = {
        "workdir": str(workdir),
        "regions": {stack.region: stack.state() for stack in stacks},
        "pids": supervisor.pids(),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)  # readers never see half a file
