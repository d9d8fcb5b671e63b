"""`xregion nats-conf render --topology FILE --out DIR`: one nats-server config per server."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.xregion.cli.common import EXIT_USAGE, CommandError, Subparsers
from services.xregion.natsconf import TopologyError, render_topology_file

__all__ = ["register", "run"]

SUMMARY = "render nats-server configurations of a super-cluster from a topology file"


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("nats-conf", help=SUMMARY, description=SUMMARY)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    render = actions.add_parser(
        "render", help="write one nats-server config per server", description=SUMMARY
    )
    render.add_argument("--topology", type=Path, required=True, metavar="FILE")
    render.add_argument("--out", type=Path, required=True, metavar="DIR")
    render.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        written = render_topology_file(args.topology, args.out)
    except (TopologyError, OSError) as exc:
        raise CommandError(str(exc), exit_code=EXIT_USAGE) from None
    for path in written:
        print(path)
    return 0
