"""`xregion up` and `xregion demo`: a whole multi-region deployment on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.xregion.cli.common import Subparsers, run_async
from services.xregion.local.up import UpOptions, run_up

__all__ = ["register", "run"]

_SUMMARIES = {
    "up": "run a whole multi-region deployment on this machine until Ctrl-C: a NATS "
    "super-cluster, provisioned, and every region's bridge, broadcaster, replayer and "
    "demo service, supervised (crashed processes restart); logs in WORKDIR/logs",
    "demo": "`up`, then concurrent (and conflicting) writes through every region's bridge; "
    "waits for convergence, prints records, lag and conflicts per region, and exits 0 "
    "only if every region holds identical data",
}


def register(sub: Subparsers) -> None:
    for name, summary in _SUMMARIES.items():
        parser = sub.add_parser(name, help=summary, description=summary)
        parser.add_argument(
            "--regions",
            default="us-east,eu-west,ap-south",
            help="comma-separated region names (default: %(default)s)",
        )
        parser.add_argument(
            "--servers-per-region",
            type=int,
            default=1,
            choices=[1, 3],
            metavar="{1,3}",
            help="NATS servers per region; 3 replicates every stream (default: %(default)s)",
        )
        parser.add_argument(
            "--base-port",
            type=int,
            default=14000,
            metavar="N",
            help="first port of the port plan: NATS from N+11, region stacks from N+410 "
            "(default: %(default)s; 0 = any free ports)",
        )
        parser.add_argument(
            "--workdir",
            type=Path,
            default=Path(".xregion"),
            metavar="DIR",
            help="server configs, JetStream data, region files, keys and logs "
            "(default: %(default)s)",
        )
        parser.add_argument(
            "--state-file",
            type=Path,
            default=None,
            metavar="FILE",
            help="where to write every URL, port and PID as JSON (default: WORKDIR/state.json; "
            "`xregion top` and `status` read it)",
        )
        if name == "up":
            parser.add_argument(
                "--prometheus",
                action="store_true",
                help="also run Prometheus (the `prometheus` binary on PATH) scraping every "
                "process with deploy/prometheus's job and evaluating its alert rules; its "
                "URL is printed and in the state file (port N+9, or a free one)",
            )
        parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = UpOptions(
        regions=[r.strip() for r in args.regions.split(",") if r.strip()],
        servers_per_region=args.servers_per_region,
        base_port=args.base_port,
        workdir=args.workdir,
        state_file=args.state_file,
        prometheus=getattr(args, "prometheus", False),
    )
    return run_async(run_up(options, stay=args.command == "up"))
