"""`xregion`: the one command line (docs/DESIGN.md §7).

Every subcommand has `--help` and fails with one clear line and a non-zero exit:
2 for bad usage or configuration, 1 for a failure while running. This is the only place
that turns errors into exit codes and lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from services.xregion.cli import (
    bench,
    demo_service,
    dlq,
    keys,
    local,
    nats_conf,
    pause,
    provision,
    serve,
    status,
    top,
    trace,
)
from services.xregion.cli.common import EXIT_FAILURE, EXIT_USAGE, CommandError
from services.xregion.errors import UsageError, XregionError
from shared.lifecycle import ServiceError
from shared.logs import configure_logging
from shared.settings import ConfigError

__all__ = ["main"]

# In the order `xregion --help` lists them.
_COMMANDS = (
    serve,
    provision,
    nats_conf,
    keys,
    local,
    pause,
    dlq,
    trace,
    demo_service,
    top,
    status,
    bench,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level or args.quiet_log_level, json=_json_logs(args.log_format))
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        return _fail(args, f"config error: {exc}", EXIT_USAGE)
    except CommandError as exc:
        return _fail(args, str(exc), exc.exit_code)
    except ServiceError as exc:
        return _fail(args, str(exc), exc.exit_code)
    except UsageError as exc:
        return _fail(args, str(exc), EXIT_USAGE)
    except XregionError as exc:
        return _fail(args, str(exc), EXIT_FAILURE)


def _fail(args: argparse.Namespace, line: str, exit_code: int) -> int:
    print(f"xregion {args.command}: {line}", file=sys.stderr)
    return exit_code


def _json_logs(choice: str) -> bool | None:
    return {"json": True, "console": False}.get(choice)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xregion",
        description="Replicate HTTP writes across regions over a NATS super-cluster.",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: info for services, warning for the other commands",
    )
    parser.set_defaults(quiet_log_level="warning")
    parser.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "console"],
        help="auto: JSON unless stderr is a terminal",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.register(sub)
    return parser
