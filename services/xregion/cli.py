"""`xregion`: the one command line (docs/DESIGN.md §7).

Every subcommand has `--help` and fails with one clear line and a non-zero exit:
2 for bad usage or configuration, 1 for a failure while running.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.xregion import bench_cmd, commands, status_cmd, top_cmd
from services.xregion.output import add_output_argument
from shared.logs import configure_logging
from shared.settings import ConfigError

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2

_SERVICES = {
    "bridge": "HTTP reverse proxy that turns successful writes into durable events",
    "broadcaster": "fan each event of this region out to the other regions",
    "replayer": "apply other regions' events to this region's services",
}
_OPS = {
    "top": "live terminal dashboard of every region's replication metrics",
    "status": "find every running instance in every region",
}
_BENCH = "benchmarks of the replication path (bridge, broadcaster, replayer)"

# The JSON each command prints with `--output json` (`top` and `status` document theirs).
_PROVISION_JSON = """\
output json: {"region", "replicas", "assets": [{"kind": "stream"|"kv"|"consumer", "name",
  "action": "created"|"updated"|"unchanged", "note": null or what an operator should know}]}
"""
_PAUSE_JSON = """\
output json: {"paths": [{"origin", "target", "state": "running"|"paused"|"unknown" (the
  switch could not be read), "since" (ISO 8601 UTC), "by" ("user@host"), "error" (why the
  switch could not be read or written)}]}; null where a value does not apply
"""
_DLQ_JSON = """\
output json (list only): {"region", "stream", "dead_letters": [{"seq", "stored" (ISO 8601
  UTC, when the stream stored it), "at" (ISO 8601 UTC, Xr-Dlq-At), "origin", "service",
  "reason", "status" (the service's HTTP status, a number), "attempts", "event_id",
  "target" (Xr-Dlq-Target), "error" (the whole Xr-Dlq-Error)}]}; null where a header is absent
"""
_TRACE_JSON = """\
output json: {"event_id", "found": bool (false: exit 1), "origin", "method", "path",
  "service", "key", "hlc" (null when not found), "searched": {"from", "to"} (ISO 8601 UTC),
  "steps": [{"region", "step": "published"|"forwarded"|"refused"|"not_forwarded"|"version"|
  "dead_lettered", "stream", "seq", "at" (ISO 8601 UTC), "after_s" (forwarded: seconds after
  the publish), "state" (version: "applied"|"claimed"|"superseded"|"older"|"none";
  not_forwarded: "acked"|"pending"|"unknown"), "reason" (a dead letter's Xr-Dlq-Reason),
  "detail" (the table's line)}]}; null where a key does not apply to a step
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level or args.quiet_log_level, json=_json_logs(args.log_format))
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"xregion {args.command}: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except commands.CommandError as exc:
        print(f"xregion {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


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
    for name, summary in _SERVICES.items():
        _service_parser(sub, name, summary)
    _provision_parser(sub)
    _natsconf_parser(sub)
    _cluster_parsers(sub)
    _pause_parsers(sub)
    _dlq_parser(sub)
    _trace_parser(sub)
    _demo_service_parser(sub)
    top_cmd.register(sub, _OPS["top"])
    status_cmd.register(sub, _OPS["status"])
    bench_cmd.register(sub, _BENCH)
    return parser


def _epilog(text: str) -> dict[str, Any]:
    """`add_parser` keywords for an epilog printed as written."""
    return {"epilog": text, "formatter_class": argparse.RawDescriptionHelpFormatter}


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="region TOML file (default: $XR_CONFIG); XR_* variables override its values",
    )


def _service_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> None:
    parser = sub.add_parser(name, help=summary, description=summary)
    _add_config(parser)
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print it with secrets redacted, and exit",
    )
    parser.set_defaults(handler=commands.run_service, quiet_log_level="info")


def _provision_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "create or update this region's streams, KV buckets and consumers (idempotent)"
    parser = sub.add_parser(
        "provision", help=summary, description=summary, **_epilog(_PROVISION_JSON)
    )
    _add_config(parser)
    parser.add_argument(
        "--replicas",
        type=int,
        choices=[1, 2, 3, 4, 5],
        help="stream replicas (default: streams.replicas, else servers in the region, up to 3)",
    )
    parser.add_argument(
        "--broadcast-start",
        type=_start_time,
        default=None,
        metavar="TIME",
        help="where a broadcaster consumer that has to be created (re-created after a deletion, "
        "or for a new region) starts: an ISO 8601 time (UTC unless it says otherwise) or "
        "'now'; events stored before it are not forwarded to that region (default: the "
        "stream's first event, so all are). Existing consumers keep their position.",
    )
    add_output_argument(parser)
    parser.set_defaults(handler=commands.provision)


def _start_time(text: str) -> dt.datetime:
    if text == "now":
        return dt.datetime.now(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-23T04:00:00Z) or 'now'"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _natsconf_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "render nats-server configurations of a super-cluster from a topology file"
    parser = sub.add_parser("nats-conf", help=summary, description=summary)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    render = actions.add_parser(
        "render", help="write one nats-server config per server", description=summary
    )
    render.add_argument("--topology", type=Path, required=True, metavar="FILE")
    render.add_argument("--out", type=Path, required=True, metavar="DIR")
    render.set_defaults(handler=commands.natsconf_render)


def _pause_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, summary, handler in (
        ("pause", "pause replication towards a target region", commands.pause),
        ("resume", "resume replication towards a target region", commands.resume),
    ):
        parser = sub.add_parser(name, help=summary, description=summary, **_epilog(_PAUSE_JSON))
        _add_config(parser)
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
        parser.set_defaults(handler=handler)


def _dlq_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "list, show, replay or purge dead-lettered events"
    parser = sub.add_parser("dlq", help=summary, description=summary, **_epilog(_DLQ_JSON))
    parser.add_argument("action", choices=["list", "show", "replay", "purge"])
    _add_config(parser)
    parser.add_argument("--region", metavar="R", help="default: the config's region")
    parser.add_argument("--service", metavar="S", help="only this service's dead letters")
    parser.add_argument("--reason", metavar="X", help="only this Xr-Dlq-Reason")
    parser.add_argument("--since", metavar="T", help="ISO time, or an age such as 30m, 2h, 7d")
    parser.add_argument("--seq", type=int, metavar="N", help="only the dead letter at seq N")
    parser.add_argument("--yes", action="store_true", help="confirm purge")
    add_output_argument(parser, note=" (list only)")
    parser.set_defaults(handler=commands.dlq)


def _trace_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "show where one event is: published, forwarded, applied, dead-lettered"
    parser = sub.add_parser(
        "trace",
        help=summary,
        description=f"{summary},\nin every region, found by its event id (the Xr-Event-Id a "
        "write's response carries).\nNeeds the admin user where NATS has permissions.",
        **_epilog(_TRACE_JSON),
    )
    parser.add_argument("event_id", metavar="EVENT_ID", help="the event's id (a UUIDv7)")
    _add_config(parser)
    parser.add_argument(
        "--window",
        type=float,
        default=300.0,
        metavar="S",
        help="search each stream up to S seconds after the id's time (default: 300); dead "
        "letters are searched to the end",
    )
    add_output_argument(parser)
    parser.set_defaults(handler=commands.trace)


def _demo_service_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = (
        "run the demo service: a configuration store (SQLite) that keeps each write's Xr-Hlc "
        "as its version and answers 409 to older writes"
    )
    parser = sub.add_parser("demo-service", help=summary, description=summary)
    parser.add_argument(
        "--listen", default="127.0.0.1:7101", metavar="HOST:PORT", help="default: %(default)s"
    )
    parser.add_argument(
        "--db", type=Path, default=Path("configs.sqlite"), metavar="FILE", help="SQLite file"
    )
    parser.set_defaults(handler=commands.demo_service, quiet_log_level="info")


def _cluster_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, summary, handler in (
        (
            "up",
            "run a whole multi-region deployment on this machine until Ctrl-C: a NATS "
            "super-cluster, provisioned, and every region's bridge, broadcaster, replayer and "
            "demo service, supervised (crashed processes restart); logs in WORKDIR/logs",
            commands.up,
        ),
        (
            "demo",
            "`up`, then concurrent (and conflicting) writes through every region's bridge; "
            "waits for convergence, prints records, lag and conflicts per region, and exits 0 "
            "only if every region holds identical data",
            commands.demo,
        ),
    ):
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
        parser.set_defaults(handler=handler)
