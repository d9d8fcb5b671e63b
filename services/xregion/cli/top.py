"""`xregion top`: a live terminal dashboard of every region's replication metrics."""

from __future__ import annotations

import argparse

from services.xregion.cli.common import (
    EXIT_USAGE,
    CommandError,
    Subparsers,
    add_output_argument,
    add_source_arguments,
    deployment_from_args,
    epilog,
    run_async,
    seconds_type,
    wants_json,
)
from services.xregion.ops.top import run_top

__all__ = ["register", "run"]

SUMMARY = "live terminal dashboard of every region's replication metrics"
_EPILOG = """\
sources: --config FILE (repeatable; admin ports from bridge/broadcaster/replayer.admin_listen)
or --state-file FILE (written by `xregion up --state-file FILE`); default .xregion/state.json.

examples:
  xregion top --state-file .xregion/state.json
  xregion top --config us-east.toml --config eu-west.toml --once
  xregion top --once --output json | jq '.paths[] | select(.state != "ok")'

output json (with --once): {"at" (ISO 8601 UTC), "window_s", "endpoints_up", "endpoints",
  "paths": [{"origin", "target", "forwarded_per_s", "applied_per_s", "applied_total",
  "lag_p50_s", "lag_p99_s", "lag_source": "window"|"cumulative", "canary_age_s", "backlog",
  "state": "ok"|"paused"|"unreachable"}],
  "regions": [{"region", "replay_backlog", "dlq", "upstream_retries_per_s", "retried_per_s",
  "outbox", "conflicts", "repeated"}],
  "health": [{"region", "service", "url", "up": bool, "ready": "ok"|"degraded"|"down",
  "error"}]}; seconds and rates are numbers, null where the table shows "-"
"""


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "top",
        help=SUMMARY,
        description=SUMMARY + ": events/s and lag per path, backlogs, dead letters, health.",
        **epilog(_EPILOG),
    )
    add_source_arguments(
        parser, config_help="a region TOML file; repeat for every region (or instance)"
    )
    parser.add_argument(
        "--interval",
        type=seconds_type(3600),
        default=1.0,
        metavar="S",
        help="seconds between refreshes (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds_type(3600),
        default=0.8,
        metavar="S",
        help="per-endpoint scrape timeout in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one frame (two scrapes one interval apart) and exit (1: nothing answered)",
    )
    add_output_argument(parser, note=" (json needs --once)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    deployment = deployment_from_args(args)
    if not deployment.admin:
        raise CommandError(
            "no admin endpoints to scrape (the state file lists none: is the region stack up?)",
            exit_code=EXIT_USAGE,
        )
    as_json = wants_json(args)
    if as_json and not args.once:
        raise CommandError("--output json needs --once", exit_code=EXIT_USAGE)
    return run_async(
        run_top(
            deployment,
            interval_s=args.interval,
            timeout_s=args.timeout,
            once=args.once,
            as_json=as_json,
        )
    )
