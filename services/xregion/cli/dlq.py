"""`xregion dlq list|show|replay|purge`: the dead letters of a region."""

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
from services.xregion.ops.dlq import Selection, parse_since, run_dlq

__all__ = ["register", "run"]

SUMMARY = "list, show, replay or purge dead-lettered events"
_JSON = """\
output json (list only): {"region", "stream", "dead_letters": [{"seq", "stored" (ISO 8601
  UTC, when the stream stored it), "at" (ISO 8601 UTC, Xr-Dlq-At), "origin", "service",
  "reason", "status" (the service's HTTP status, a number), "attempts", "event_id",
  "target" (Xr-Dlq-Target), "error" (the whole Xr-Dlq-Error)}]}; null where a header is absent
"""


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("dlq", help=SUMMARY, description=SUMMARY, **epilog(_JSON))
    parser.add_argument("action", choices=["list", "show", "replay", "purge"])
    add_config(parser)
    parser.add_argument("--region", metavar="R", help="default: the config's region")
    parser.add_argument("--service", metavar="S", help="only this service's dead letters")
    parser.add_argument("--reason", metavar="X", help="only this Xr-Dlq-Reason")
    parser.add_argument("--since", metavar="T", help="ISO time, or an age such as 30m, 2h, 7d")
    parser.add_argument("--seq", type=int, metavar="N", help="only the dead letter at seq N")
    parser.add_argument("--yes", action="store_true", help="confirm purge")
    add_output_argument(parser, note=" (list only)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    as_json = wants_json(args)
    if as_json and args.action != "list":
        raise CommandError(
            f"--output json: only for `dlq list`, not `dlq {args.action}`", exit_code=EXIT_USAGE
        )
    settings = region_settings(args)
    selection = Selection(
        region=args.region or settings.region,
        service=args.service,
        reason=args.reason,
        since=parse_since(args.since) if args.since else None,
        seq=args.seq,
    )
    return run_async(run_dlq(settings, args.action, selection, yes=args.yes, as_json=as_json))
