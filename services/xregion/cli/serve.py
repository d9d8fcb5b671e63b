"""`xregion bridge|broadcaster|replayer [--check-config]`: run one service of this region."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from services.xregion.cli.common import Subparsers, add_config, region_settings, run_async
from shared.settings import Settings, redacted_dump

__all__ = ["register", "run"]

SERVICES = {
    "bridge": "HTTP reverse proxy that turns successful writes into durable events",
    "broadcaster": "fan each event of this region out to the other regions",
    "replayer": "apply other regions' events to this region's services",
}


def register(sub: Subparsers) -> None:
    for name, summary in SERVICES.items():
        parser = sub.add_parser(name, help=summary, description=summary)
        add_config(parser)
        parser.add_argument(
            "--check-config",
            action="store_true",
            help="validate the configuration, print it with secrets redacted, and exit",
        )
        parser.set_defaults(handler=run, quiet_log_level="info")


def run(args: argparse.Namespace) -> int:
    settings = region_settings(args)
    if args.check_config:
        json.dump(redacted_dump(settings), sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    return run_async(_runner(args.command)(settings))


def _runner(service: str) -> Callable[[Settings], Coroutine[Any, Any, int]]:
    # Imported when run: each service registers its metrics in the process-global registry
    # on import, and one service's process must not export the others'.
    if service == "bridge":
        from services.bridge.main import run_bridge

        return run_bridge
    if service == "broadcaster":
        from services.broadcaster.main import run_broadcaster

        return run_broadcaster
    from services.replayer.main import run_replayer

    return run_replayer
