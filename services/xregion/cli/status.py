"""`xregion status`: every running instance in every region, and every path's state."""

from __future__ import annotations

import argparse
import sys

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
from services.xregion.ops.status import run_status

__all__ = ["register", "run"]

SUMMARY = "find every running instance in every region"
_EPILOG = """\
sources: --config FILE (its [nats] section; repeat to name fallbacks) or --state-file FILE
(written by `xregion up --state-file FILE`); default .xregion/state.json. One region's NATS
is enough: requests cross the gateways.

health: the instance's own /readyz (ok|degraded|down), "unreachable" when its admin port does
not answer, "-" when its metadata carries no admin_url.

paths: every origin -> target; its pause switch (running|paused|unknown: the origin's control
bucket could not be read), since when and by whom, its backlog (events the origin's
broadcasters have not forwarded to the target yet; "-": none of them answered) and what the
broadcasters report (ok|paused|unreachable).

output json: {"instances": [{"region", "service", "instance", "version", "started" (ISO 8601
  UTC), "uptime_s", "health", "admin_url", "metadata": {...}}],
  "paths": [{"origin", "target", "state": "running"|"paused"|"unknown", "since" (ISO 8601
  UTC), "by", "error", "backlog" (events), "forwarding": "ok"|"paused"|"unreachable"}]};
  null where a value is unknown
"""


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "status",
        help=SUMMARY,
        description=SUMMARY + " (through the NATS services API: $SRV.PING, INFO, STATS), "
        "and every replication path's pause switch and backlog.",
        **epilog(_EPILOG),
    )
    add_source_arguments(
        parser, config_help="a region TOML file whose NATS to use (repeatable: tried in order)"
    )
    parser.add_argument(
        "--timeout",
        type=seconds_type(60),
        default=1.0,
        metavar="S",
        help="how long to collect answers, in seconds (default: %(default)s)",
    )
    add_output_argument(parser)
    parser.add_argument("--json", action="store_true", help="deprecated: --output json")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    deployment = deployment_from_args(args)
    if not deployment.nats:
        raise CommandError("the deployment names no NATS servers", exit_code=EXIT_USAGE)
    if args.json:
        print("xregion status: --json is deprecated: use --output json", file=sys.stderr)
    as_json = args.json or wants_json(args)
    return run_async(run_status(deployment, timeout_s=args.timeout, as_json=as_json))
