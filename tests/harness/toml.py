"""Region files as tests write them: one value as TOML, one table, one whole file from plain
data (the standard library reads TOML only)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REGION_KEYS",
    "REGION_TABLES",
    "region_toml",
    "toml_table",
    "toml_value",
    "write_region_toml",
]

# A region file's top-level keys and its tables, in the order a region file lists them.
REGION_KEYS = ("region", "regions", "data_dir")
REGION_TABLES = ("nats", "signing", "bridge", "broadcaster", "replayer")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an inline table
        pairs = (f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + ", ".join(pairs) + " }"
    raise TypeError(f"cannot render {value!r} as TOML")


def toml_table(name: str, values: Mapping[str, Any]) -> list[str]:
    """One `[name]` table's lines (None values left out: TOML has no null)."""
    return [f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None)]


def region_toml(data: Mapping[str, Any], *, tables: Sequence[str] = REGION_TABLES) -> str:
    """`data` (a region file as plain values, e.g. `Settings.model_dump(mode="json")`) as TOML.

    Written: the top-level `region`, `regions`, `data_dir` and the `tables` that `data` has,
    then one `[services.<name>]` per service; any other key of `data` is left out.
    """
    lines = [f"{key} = {toml_value(data[key])}" for key in REGION_KEYS if key in data]
    for table in tables:
        if table in data:
            lines += toml_table(table, data[table])
    for name, service in data.get("services", {}).items():
        lines += toml_table(f"services.{name}", service)
    return "\n".join(lines) + "\n"


def write_region_toml(
    path: Path, data: Mapping[str, Any], *, tables: Sequence[str] = REGION_TABLES
) -> Path:
    """`region_toml(data, tables=tables)` written to `path`; `path`."""
    path.write_text(region_toml(data, tables=tables))
    return path
