"""How the operator commands print: `--output table|json`, one JSON document, uncut tables.

* `OUTPUTS`: the choices of `--output` (`services.xregion.cli.common.add_output_argument`;
  each command documents its JSON's keys in its `--help` epilog and README's Commands section);
* `print_json` writes one JSON document on stdout: keys in the order given, UTF-8, no NaN;
* `table_console` is the rich Console a command prints its tables on: the terminal's own on a
  terminal; off one (a pipe, a file) wide enough that no table is cut, and without colour;
* `iso_utc`, `iso_utc_text`, `number`, `count`: machine-friendly JSON values (times as ISO
  8601 UTC, seconds and rates as plain numbers, counts as integers, `null` when unknown).
"""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

__all__ = [
    "OUTPUTS",
    "count",
    "iso_utc",
    "iso_utc_text",
    "number",
    "print_json",
    "table_console",
]

OUTPUTS = ("table", "json")
# Off a terminal no width is right; rich pads nothing that does not expand, so a width this
# large costs nothing and lets every table take the width its cells need.
_UNCUT_WIDTH = 10_000


def print_json(data: Any) -> None:
    """`data` as one indented JSON document and a newline on stdout."""
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, allow_nan=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def table_console() -> Console:
    """The console for a command's tables (see the module docstring)."""
    console = Console()
    if console.is_terminal:
        return console
    return Console(width=_UNCUT_WIDTH, color_system=None)


def iso_utc(when: datetime | None) -> str | None:
    """`2026-12-02T13:29:46.123Z` (a naive datetime is taken as UTC)."""
    if when is None:
        return None
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_utc_text(text: str | None) -> str | None:
    """An ISO 8601 time as written by another component, as `iso_utc`; None if it is not one."""
    if not text:
        return None
    try:
        return iso_utc(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))
    except ValueError:
        return None


def number(value: float | None, digits: int = 6) -> float | None:
    """A float for JSON: rounded, None when unknown or not finite (JSON has no NaN/inf)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def count(value: float | None) -> int | None:
    """A count read from a metric (a float there) as an integer."""
    return None if value is None or not math.isfinite(value) else round(value)
