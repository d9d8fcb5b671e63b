"""`xregion provision`: create or update this region's streams, KV buckets and consumers."""

from __future__ import annotations

import argparse
import datetime as dt

from services.xregion.cli.common import (
    Subparsers,
    add_config,
    add_output_argument,
    epilog,
    region_settings,
    run_async,
    wants_json,
)
from services.xregion.ops.provision import provision_region

__all__ = ["register", "run"]

SUMMARY = "create or update this region's streams, KV buckets and consumers (idempotent)"
_JSON = """\
output json: {"region", "replicas", "assets": [{"kind": "stream"|"kv"|"consumer", "name",
  "action": "created"|"updated"|"unchanged", "note": null or what an operator should know}]}
"""


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("provision", help=SUMMARY, description=SUMMARY, **epilog(_JSON))
    add_config(parser)
    parser.add_argument(
        "--replicas",
        type=int,
        choices=[1, 2, 3, 4, 5],
        help="stream replicas (default: streams.replicas, else servers in the region, up to 3)",
    )
    parser.add_argument(
        "--broadcast-start",
        type=start_time,
        default=None,
        metavar="TIME",
        help="where a broadcaster consumer that has to be created (re-created after a deletion, "
        "or for a new region) starts: an ISO 8601 time (UTC unless it says otherwise) or "
        "'now'; events stored before it are not forwarded to that region (default: the "
        "stream's first event, so all are). Existing consumers keep their position.",
    )
    add_output_argument(parser)
    parser.set_defaults(handler=run)


def start_time(text: str) -> dt.datetime:
    """`--broadcast-start`: an ISO 8601 time (UTC unless it says otherwise) or `now`."""
    if text == "now":
        return dt.datetime.now(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-23T04:00:00Z) or 'now'"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def run(args: argparse.Namespace) -> int:
    settings = region_settings(args)
    return run_async(
        provision_region(
            settings,
            replicas=args.replicas,
            broadcast_start=args.broadcast_start,
            as_json=wants_json(args),
        )
    )
