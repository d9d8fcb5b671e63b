"""What every `xregion` subcommand shares: its errors, options, settings and event loop.

Each subcommand module (`services/xregion/cli/<name>.py`) has `register(sub)`, which adds its
parser and sets `handler=run`, and `run(args)`: argparse namespace in, exit code out. A
subcommand builds its configuration once, runs one coroutine (`run_async`) and raises
`CommandError` for what it checks itself; `services.xregion.cli.main` turns that and the
library's errors into one line and an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeAlias

import uvloop

from services.xregion.ops.deployment import Deployment, DeploymentError, load_deployment
from services.xregion.ops.output import OUTPUTS
from shared.settings import Settings, load_settings

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "CommandError",
    "Subparsers",
    "add_config",
    "add_output_argument",
    "add_source_arguments",
    "deployment_from_args",
    "epilog",
    "region_settings",
    "run_async",
    "seconds_type",
    "wants_json",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2

# A string: argparse's class is not subscriptable at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandError(Exception):
    """A command failed in a way the user can act on; printed as one line."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine on uvloop."""
    return uvloop.run(coro)


def epilog(text: str) -> dict[str, Any]:
    """`add_parser` keywords for an epilog printed as written."""
    return {"epilog": text, "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="region TOML file (default: $XR_CONFIG); XR_* variables override its values",
    )


def region_settings(args: argparse.Namespace) -> Settings:
    """The region file `--config` names, with a warning on stderr when signing is off."""
    settings = load_settings(args.config)
    if settings.signing.mode == "off":
        print(
            f"xregion {args.command}: warning: signing is off (signing.mode = 'off'); "
            "events are neither signed nor verified",
            file=sys.stderr,
        )
    return settings


def add_output_argument(parser: argparse.ArgumentParser, *, note: str = "") -> None:
    """`--output {table,json}`; `note` is added to its help (where it applies, say)."""
    parser.add_argument(
        "--output",
        choices=OUTPUTS,
        default="table",
        help="table (default) or json: one JSON document, its keys listed below" + note,
    )


def wants_json(args: argparse.Namespace) -> bool:
    return getattr(args, "output", "table") == "json"


def add_source_arguments(parser: argparse.ArgumentParser, *, config_help: str) -> None:
    """`--state-file FILE | --config FILE...`: where a command finds the deployment."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--state-file", type=Path, metavar="FILE", help="JSON written by `xregion up --state-file`"
    )
    source.add_argument(
        "--config", type=Path, action="append", default=[], metavar="FILE", help=config_help
    )


def seconds_type(maximum: float) -> Callable[[str], float]:
    """An argparse `type=` for a duration in seconds, 0 < value <= `maximum`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not 0 < value <= maximum:
            raise argparse.ArgumentTypeError(f"expected 0 < seconds <= {maximum:g}, got {text}")
        return value

    return parse


def deployment_from_args(args: argparse.Namespace) -> Deployment:
    """The deployment that `--state-file` / `--config` name; a usage error (exit 2) if not."""
    try:
        return load_deployment(args.state_file, args.config)
    except DeploymentError as exc:
        raise CommandError(str(exc), exit_code=EXIT_USAGE) from None
