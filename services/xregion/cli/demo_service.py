"""`xregion demo-service`: the demo service, a versioned configuration store."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.demo_service.main import run_demo_service
from services.xregion.cli.common import Subparsers, run_async

__all__ = ["register", "run"]

SUMMARY = (
    "run the demo service: a configuration store (SQLite) that keeps each write's Xr-Hlc "
    "as its version and answers 409 to older writes"
)


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("demo-service", help=SUMMARY, description=SUMMARY)
    parser.add_argument(
        "--listen", default="127.0.0.1:7101", metavar="HOST:PORT", help="default: %(default)s"
    )
    parser.add_argument(
        "--db", type=Path, default=Path("configs.sqlite"), metavar="FILE", help="SQLite file"
    )
    parser.set_defaults(handler=run, quiet_log_level="info")


def run(args: argparse.Namespace) -> int:
    return run_async(run_demo_service(args.listen, args.db))
