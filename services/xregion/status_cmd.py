"""`xregion status`: not yet available."""

from __future__ import annotations

import argparse

from services.xregion import commands

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], summary: str) -> None:
    parser = sub.add_parser("status", help=f"{summary} (not yet available)", description=summary)
    parser.set_defaults(handler=commands.not_yet_available)
