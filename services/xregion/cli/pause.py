"""`xregion pause|resume --target R [--origin O]` and `xregion pause --list`."""

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
from services.xregion.ops.pause import list_paths, switch_paths

__all__ = ["register", "run"]

_SUMMARIES = {
    "pause": "pause replication towards a target region",
    "resume": "resume replication towards a target region",
}
_JSON = """\
output json: {"paths": [{"origin", "target", "state": "running"|"paused"|"unknown" (the
  switch could not be read), "since" (ISO 8601 UTC), "by" ("user@host"), "error" (why the
  switch could not be read or written)}]}; null where a value does not apply
"""


def register(sub: Subparsers) -> None:
    for name, summary in _SUMMARIES.items():
        parser = sub.add_parser(name, help=summary, description=summary, **epilog(_JSON))
        add_config(parser)
        parser.add_argument(
            "--target", metavar="R", help="the target region (required unless --list)"
        )
        parser.add_argument(
            "--origin",
            metavar="R",
            help="only the path from this region (default: from every other region)",
        )
        if name == "pause":
            parser.add_argument(
                "--list", action="store_true", help="print every path and whether it is paused"
            )
        add_output_argument(parser)
        parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    pausing = args.command == "pause"
    as_json = wants_json(args)
    if pausing and args.list:
        return run_async(list_paths(region_settings(args), as_json=as_json))
    if args.target is None:
        required = "--target is required (or --list)" if pausing else "--target is required"
        raise CommandError(required, exit_code=EXIT_USAGE)
    return run_async(
        switch_paths(
            region_settings(args),
            target=args.target,
            origin=args.origin,
            paused=pausing,
            as_json=as_json,
        )
    )
