"""`xregion trace EVENT_ID`: where one event is, in every region."""

from __future__ import annotations

import argparse

from services.xregion.cli.common import (
    EXIT_USAGE,
    CommandError,
    Subparsers,
    add_config,
    add_output_argument,
    epilog,
    region_settings,
    run_async,
    wants_json,
)
from services.xregion.ops.trace import check_event_id, run_trace

__all__ = ["register", "run"]

SUMMARY = "show where one event is: published, forwarded, applied, dead-lettered"
_JSON = """\
output json: {"event_id", "found": bool (false: exit 1), "origin", "method", "path",
  "service", "key", "hlc" (null when not found), "searched": {"from", "to"} (ISO 8601 UTC),
  "steps": [{"region", "step": "published"|"forwarded"|"refused"|"not_forwarded"|"version"|
  "dead_lettered", "stream", "seq", "at" (ISO 8601 UTC), "after_s" (forwarded: seconds after
  the publish), "state" (version: "applied"|"claimed"|"superseded"|"older"|"none";
  not_forwarded: "acked"|"pending"|"unknown"), "reason" (a dead letter's Xr-Dlq-Reason),
  "detail" (the table's line)}]}; null where a key does not apply to a step
"""


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "trace",
        help=SUMMARY,
        description=f"{SUMMARY},\nin every region, found by its event id (the Xr-Event-Id a "
        "write's response carries).\nNeeds the admin user where NATS has permissions.",
        **epilog(_JSON),
    )
    parser.add_argument("event_id", metavar="EVENT_ID", help="the event's id (a UUIDv7)")
    add_config(parser)
    parser.add_argument(
        "--window",
        type=float,
        default=300.0,
        metavar="S",
        help="search each stream up to S seconds after the id's time (default: 300); dead "
        "letters are searched to the end",
    )
    add_output_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_event_id(args.event_id)  # before the configuration is read: one line, no warnings
    if args.window <= 0:
        raise CommandError(f"--window {args.window:g}: must be positive", exit_code=EXIT_USAGE)
    return run_async(
        run_trace(
            region_settings(args), args.event_id, window_s=args.window, as_json=wants_json(args)
        )
    )
