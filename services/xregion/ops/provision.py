"""`xregion provision`: connect to the region's NATS, apply the provisioning plan, report."""

from __future__ import annotations

import datetime as dt

from nats.js.errors import APIError
from rich.table import Table

from services.xregion.errors import XregionError
from services.xregion.ops.output import print_json, table_console
from shared import provision
from shared.natsconn import NatsConnectError, NatsConnection
from shared.settings import Settings

__all__ = ["provision_region", "region_cluster_size"]


def region_cluster_size(conn: NatsConnection) -> int:
    """Servers in the cluster we are connected to: our server plus the ones it advertised."""
    return len({url.netloc for url in conn.nc.servers}) or 1


async def provision_region(
    settings: Settings,
    replicas: int | None = None,
    *,
    broadcast_start: dt.datetime | None = None,
    as_json: bool = False,
) -> int:
    try:
        async with NatsConnection(settings.nats, service="provision") as conn:
            count = replicas or provision.replicas_for(
                region_cluster_size(conn), settings.streams.replicas
            )
            wanted = provision.plan(settings, count, broadcast_start=broadcast_start)
            results = await provision.apply(conn.jetstream(), wanted)
    except NatsConnectError as exc:
        raise XregionError(str(exc)) from None
    except APIError as exc:
        raise XregionError(f"JetStream refused: {exc.description} (err {exc.err_code})") from None
    except TimeoutError:
        raise XregionError(
            "JetStream did not answer in time (is the meta leader reachable?)"
        ) from None
    if as_json:
        print_json(_json(settings.region, count, results))
    else:
        _print(settings.region, count, results)
    return 0


def _json(region: str, replicas: int, results: list[provision.Result]) -> dict[str, object]:
    assets = [
        {"kind": r.kind, "name": r.name, "action": str(r.action), "note": r.note} for r in results
    ]
    return {"region": region, "replicas": replicas, "assets": assets}


def _print(region: str, replicas: int, results: list[provision.Result]) -> None:
    table = Table(title=f"provisioned region {region} (replicas {replicas})")
    for column in ("kind", "name", "action"):
        table.add_column(column)
    for result in results:
        table.add_row(result.kind, result.name, str(result.action))
    console = table_console()
    console.print(table)
    for result in results:
        if result.note:
            console.print(f"{result.name}: {result.note}", highlight=False, soft_wrap=True)
