"""`xregion up` and `xregion demo`: a whole multi-region deployment on this machine.

Today that is the NATS super-cluster, provisioned for every region; the region stacks
(bridge, broadcaster, replayer, demo service) join it as their issues land. `up` keeps it
running until Ctrl-C or SIGTERM; `demo` prints its health and stops it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from nats.js.errors import APIError
from rich.console import Console
from rich.table import Table

from services.xregion.commands import CommandError
from services.xregion.natsconf import TopologyError, build_topology
from services.xregion.supercluster import (
    ServerHealth,
    SuperCluster,
    SuperClusterError,
    with_free_ports,
)
from shared import provision
from shared.lifecycle import until_signalled
from shared.natsconn import NatsConnectError, NatsConnection
from shared.regions import InvalidNameError, validate_region
from shared.settings import NatsSettings, Settings, SigningSettings

__all__ = ["run_up"]

console = Console(stderr=True)


async def run_up(args: argparse.Namespace, *, stay: bool) -> int:
    regions = _regions(args.regions)
    workdir: Path = args.workdir.resolve()
    if not stay:
        shutil.rmtree(workdir / "data", ignore_errors=True)  # a demo starts from nothing
    try:
        topology = build_topology(
            regions,
            servers_per_region=args.servers_per_region,
            base_port=args.base_port or 14000,
        )
    except TopologyError as exc:
        raise CommandError(str(exc), exit_code=2) from None
    if args.base_port == 0:
        topology = with_free_ports(topology)
    cluster = SuperCluster(topology, workdir)
    try:
        return await _run(cluster, regions, args, stay=stay)
    except (SuperClusterError, NatsConnectError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        with console.status("stopping the super-cluster"):
            await cluster.stop()


async def _run(
    cluster: SuperCluster, regions: list[str], args: argparse.Namespace, *, stay: bool
) -> int:
    with console.status(f"starting {len(cluster.servers)} nats-server processes"):
        await cluster.start(timeout_s=90)
    for region in regions:
        with console.status(f"provisioning {region}"):
            await _provision(cluster, region, regions, args.workdir)
    rows = await cluster.health()
    console.print(_health_table(rows))
    healthy, verdict = _verdict(rows, regions)
    console.print(verdict, style="green" if healthy else "bold red")
    if args.state_file is not None:
        _write_state(args.state_file, cluster, regions)
    if stay:
        console.print("super-cluster up; Ctrl-C or SIGTERM stops it")
        await until_signalled(lambda stop: stop())
    return 0 if healthy else 1


def _regions(text: str) -> list[str]:
    regions = [r.strip() for r in text.split(",") if r.strip()]
    try:
        for region in regions:
            validate_region(region)
    except InvalidNameError as exc:
        raise CommandError(str(exc), exit_code=2) from None
    if len(regions) < 1 or len(set(regions)) != len(regions):
        raise CommandError("--regions needs distinct region names", exit_code=2)
    return regions


def region_settings(
    cluster: SuperCluster, region: str, regions: list[str], workdir: Path
) -> Settings:
    """The region file a stack of this local deployment would use."""
    return Settings(
        region=region,
        regions=regions,
        data_dir=workdir / "stacks" / region,
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
        raise CommandError(
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
        return False, "NOT healthy: see the table above and the logs under the workdir"
    return True, (
        f"healthy: {len(regions)} regions provisioned, {len(rows)} servers, "
        f"every gateway up, meta leader {leaders.pop()}"
    )


def _write_state(path: Path, cluster: SuperCluster, regions: list[str]) -> None:
    state: dict[str, Any] = {
        "regions": {
            region: {
                "nats": cluster.client_urls(region),
                "nats_monitor": cluster.monitor_urls(region),
            }
            for region in regions
        },
        "workdir": str(cluster.workdir),
    }
    path.write_text(json.dumps(state, indent=2) + "\n")
