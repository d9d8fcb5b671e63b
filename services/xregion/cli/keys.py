"""`xregion keys generate|show|rotate`: signing key pairs and their trusted-keys entries."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.xregion.cli.common import (
    EXIT_USAGE,
    CommandError,
    Subparsers,
    add_config,
    add_output_argument,
    epilog,
    region_settings,
    wants_json,
)
from services.xregion.ops.keys import (
    ROLES,
    KeyPair,
    Rotation,
    configured_keys,
    default_key_id,
    generate_key,
    plan_rotation,
    read_key,
    signing_lines,
    trust_status,
    trusted_entries,
)
from services.xregion.ops.output import print_json
from shared.signing import Role

__all__ = ["register", "run"]

SUMMARY = "generate, show and rotate the Ed25519 keys that sign events and replay markers"
_JSON = """\
output json: {"keys": [{"key_id", "region", "roles", "private_key_file", "public_key",
  "trusted" (show --config only: "trusted" | "not trusted" | "other public key" |
  "other region or roles")}], "trusted_keys" (the entries as TOML text), "signing" (the
  region file's [signing] keys as TOML text, or null), "steps" (rotate: what to do, in order)}
"""
_ENTRY_NOTE = (
    "# Add to the trusted-keys file of every region (signing.trusted_keys_file), then SIGHUP\n"
    "# every bridge and replayer (docs/SECURITY.md §4):"
)


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("keys", help=SUMMARY, description=SUMMARY)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    _register_generate(actions)
    _register_show(actions)
    _register_rotate(actions)


def _register_generate(actions: Subparsers) -> None:
    summary = "write new key pairs of a region and print their trusted-keys entries"
    parser = actions.add_parser("generate", help=summary, description=summary, **epilog(_JSON))
    parser.add_argument("--region", required=True, metavar="R")
    parser.add_argument(
        "--role",
        choices=[*ROLES, "both"],
        default="both",
        help="bridge (signs events), replayer (signs replay markers) or both (default): one "
        "key per role",
    )
    parser.add_argument(
        "--key-id",
        metavar="ID",
        help="with one --role: the key's id (default <region>-1, <region>-replayer-1)",
    )
    parser.add_argument(
        "--dir", type=Path, required=True, metavar="DIR",
        help="where <key id>.pem is written (mode 0600, never overwritten)",
    )  # fmt: skip
    add_output_argument(parser)
    parser.set_defaults(handler=run)


def _register_show(actions: Subparsers) -> None:
    summary = "print the trusted-keys entries of a region's keys (or of one key file)"
    parser = actions.add_parser("show", help=summary, description=summary, **epilog(_JSON))
    add_config(parser)
    parser.add_argument("--key", type=Path, metavar="FILE",
                        help="a private key file instead of the region file's keys")  # fmt: skip
    parser.add_argument("--region", metavar="R", help="with --key: the region it speaks for")
    parser.add_argument("--role", choices=ROLES, help="with --key: what it signs")
    parser.add_argument("--key-id", metavar="ID", help="with --key (default: the file's stem)")
    add_output_argument(parser)
    parser.set_defaults(handler=run)


def _register_rotate(actions: Subparsers) -> None:
    summary = "write a new key beside the one in use and print how to roll it out"
    parser = actions.add_parser("rotate", help=summary, description=summary, **epilog(_JSON))
    add_config(parser)
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--key-id", metavar="ID", help="the new key's id (default: next number)")
    parser.add_argument(
        "--dir", type=Path, metavar="DIR",
        help="where the new key is written (default: beside the old one)",
    )  # fmt: skip
    add_output_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "generate":
        return _generate(args)
    if args.action == "show":
        return _show(args)
    return _rotate(args)


def _generate(args: argparse.Namespace) -> int:
    roles: tuple[Role, ...] = ROLES if args.role == "both" else (args.role,)
    if args.key_id is not None and len(roles) > 1:
        raise CommandError("--key-id needs one --role", exit_code=EXIT_USAGE)
    ids = {role: args.key_id or default_key_id(args.region, role) for role in roles}
    for key_id in ids.values():
        if (args.dir / f"{key_id}.pem").exists():
            # Before writing any: a half-written pair of keys helps nobody.
            raise CommandError(f"{args.dir / key_id}.pem exists already: never overwritten")
    pairs = [
        generate_key(
            args.dir,
            key_id=ids[role],
            region=args.region,
            role=role,
        )
        for role in roles
    ]
    by_role = {pair.roles[0]: pair for pair in pairs}
    signing = signing_lines(by_role.get("bridge"), by_role.get("replayer"))
    if wants_json(args):
        print_json(_document(pairs, signing=signing))
        return 0
    for pair in pairs:
        print(f"# wrote {pair.private_key_file}: {pair.roles[0]} key of {pair.region} (private)")
    print(_ENTRY_NOTE)
    print(trusted_entries(pairs))
    print(f"# In {args.region}'s region file, [signing]:")
    print(signing, end="")
    return 0


def _show(args: argparse.Namespace) -> int:
    if args.key is not None:
        return _show_file(args)
    settings = region_settings(args)
    keys = configured_keys(settings)
    pairs = _distinct(keys.values())
    status = {role: trust_status(settings, pair, role) for role, pair in keys.items()}
    if wants_json(args):
        extra = {pair.key_id: _status_of(pair, keys, status) for pair in pairs}
        print_json(_document(pairs, trusted=extra))
        return 0
    for role, pair in keys.items():
        print(f"# {role} key {pair.key_id!r} ({pair.private_key_file}): {status[role]}")
    print(_ENTRY_NOTE)
    print(trusted_entries(pairs), end="")
    return 0


def _show_file(args: argparse.Namespace) -> int:
    if args.region is None or args.role is None:
        raise CommandError("--key needs --region and --role", exit_code=EXIT_USAGE)
    key_id = args.key_id or args.key.stem
    pair = read_key(args.key, key_id=key_id, region=args.region, roles=(args.role,))
    if wants_json(args):
        print_json(_document([pair]))
        return 0
    print(_ENTRY_NOTE)
    print(trusted_entries([pair]), end="")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    settings = region_settings(args)
    rotation = plan_rotation(
        settings, args.role, directory=args.dir, key_id=args.key_id, config=args.config
    )
    pairs = [rotation.old, rotation.new]
    if wants_json(args):
        print_json(_document(pairs, steps=rotation.steps))
        return 0
    _print_rotation(rotation)
    return 0


def _print_rotation(rotation: Rotation) -> None:
    print(f"# wrote {rotation.new.private_key_file}: the new {rotation.role} key (private)")
    print("# Trust both the old and the new key while the change rolls out:")
    print(trusted_entries([rotation.old, rotation.new]))
    print("# Then, in this order:")
    for number, step in enumerate(rotation.steps, 1):
        print(f"# {number}. {step}")


def _distinct(pairs: Any) -> list[KeyPair]:
    """One pair per key id (a replayer without its own key shares the bridge's)."""
    seen: dict[str, KeyPair] = {}
    for pair in pairs:
        seen.setdefault(pair.key_id, pair)
    return list(seen.values())


def _status_of(pair: KeyPair, keys: Mapping[Role, KeyPair], status: Mapping[Role, str]) -> str:
    return next(status[role] for role, other in keys.items() if other.key_id == pair.key_id)


def _document(
    pairs: list[KeyPair],
    *,
    signing: str | None = None,
    trusted: dict[str, str] | None = None,
    steps: tuple[str, ...] = (),
) -> dict[str, Any]:
    keys = []
    for pair in pairs:
        entry: dict[str, Any] = {
            "key_id": pair.key_id,
            "region": pair.region,
            "roles": list(pair.roles),
            "private_key_file": str(pair.private_key_file),
            "public_key": pair.public_key,
        }
        if trusted is not None:
            entry["trusted"] = trusted[pair.key_id]
        keys.append(entry)
    return {
        "keys": keys,
        "trusted_keys": trusted_entries(pairs),
        "signing": signing,
        "steps": list(steps),
    }
