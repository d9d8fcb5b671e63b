"""Handlers of the `xregion` subcommands: argparse namespace in, exit code out.

Each handler builds its configuration once, runs one coroutine, and turns the failures it
knows into `CommandError` (one line for the user, an exit code).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import uvloop

from services.xregion.output import wants_json
from shared.natsconn import NatsConnectError, NatsConnection
from shared.settings import Settings, load_settings, redacted_dump

__all__ = [
    "CommandError",
    "connected",
    "demo",
    "demo_service",
    "dlq",
    "natsconf_render",
    "pause",
    "provision",
    "resume",
    "run_service",
    "trace",
    "up",
]


class CommandError(Exception):
    """A command failed in a way the user can act on; printed as one line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine on uvloop."""
    return uvloop.run(coro)


@contextlib.asynccontextmanager
async def connected(settings: Settings, command: str) -> AsyncIterator[NatsConnection]:
    """A NATS connection for an operator command; a failed connect is a CommandError."""
    conn = NatsConnection(settings.nats, service="xregion", name=f"xregion-{command}")
    try:
        await conn.connect()
    except NatsConnectError as exc:
        raise CommandError(str(exc)) from None
    try:
        yield conn
    finally:
        await conn.aclose()


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if settings.signing.mode == "off":
        print(
            f"xregion {args.command}: warning: signing is off (signing.mode = 'off'); "
            "events are neither signed nor verified",
            file=sys.stderr,
        )
    return settings


def run_service(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.check_config:
        json.dump(redacted_dump(settings), sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    return run(_serve(args.command, settings))


async def _serve(service: str, settings: Settings) -> int:
    from services.bridge.main import run_bridge
    from services.broadcaster.main import run_broadcaster
    from services.replayer.main import run_replayer
    from shared.lifecycle import ServiceError

    runners = {"bridge": run_bridge, "broadcaster": run_broadcaster, "replayer": run_replayer}
    try:
        return await runners[service](settings)
    except ServiceError as exc:
        raise CommandError(str(exc), exit_code=exc.exit_code) from None


def dlq(args: argparse.Namespace) -> int:
    from services.xregion.dlq_cmd import Selection, parse_since, run_dlq

    as_json = wants_json(args)
    if as_json and args.action != "list":
        raise CommandError(f"--output json: only for `dlq list`, not `dlq {args.action}`", 2)
    settings = _settings(args)
    selection = Selection(
        region=args.region or settings.region,
        service=args.service,
        reason=args.reason,
        since=parse_since(args.since) if args.since else None,
        seq=args.seq,
    )
    return run(run_dlq(settings, args.action, selection, yes=args.yes, as_json=as_json))


def trace(args: argparse.Namespace) -> int:
    from services.xregion.trace_cmd import check_event_id, run_trace

    check_event_id(args.event_id)  # before the configuration is read: one line, no warnings
    if args.window <= 0:
        raise CommandError(f"--window {args.window:g}: must be positive", 2)
    return run(
        run_trace(_settings(args), args.event_id, window_s=args.window, as_json=wants_json(args))
    )


def pause(args: argparse.Namespace) -> int:
    from services.xregion.pause_cmd import list_paths, switch_paths

    as_json = wants_json(args)
    if args.list:
        return run(list_paths(_settings(args), as_json=as_json))
    if args.target is None:
        raise CommandError("--target is required (or --list)", exit_code=2)
    return run(
        switch_paths(
            _settings(args), target=args.target, origin=args.origin, paused=True, as_json=as_json
        )
    )


def resume(args: argparse.Namespace) -> int:
    from services.xregion.pause_cmd import switch_paths

    if args.target is None:
        raise CommandError("--target is required", exit_code=2)
    return run(
        switch_paths(
            _settings(args),
            target=args.target,
            origin=args.origin,
            paused=False,
            as_json=wants_json(args),
        )
    )


def provision(args: argparse.Namespace) -> int:
    from services.xregion.provision_cmd import provision_region

    settings = _settings(args)
    return run(
        provision_region(
            settings,
            replicas=args.replicas,
            broadcast_start=args.broadcast_start,
            as_json=wants_json(args),
        )
    )


def natsconf_render(args: argparse.Namespace) -> int:
    from services.xregion.natsconf import TopologyError, render_topology_file

    try:
        written = render_topology_file(args.topology, args.out)
    except (TopologyError, OSError) as exc:
        raise CommandError(str(exc), exit_code=2) from None
    for path in written:
        print(path)
    return 0


def up(args: argparse.Namespace) -> int:
    from services.xregion.local import run_up

    return run(run_up(args, stay=True))


def demo(args: argparse.Namespace) -> int:
    from services.xregion.local import run_up

    return run(run_up(args, stay=False))


def demo_service(args: argparse.Namespace) -> int:
    from services.configstore.main import run_configstore
    from shared.lifecycle import ServiceError

    try:
        return run(run_configstore(args.listen, args.db))
    except ServiceError as exc:
        raise CommandError(str(exc), exit_code=exc.exit_code) from None
