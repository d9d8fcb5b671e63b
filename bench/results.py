"""Where the benches put their figures: `bench/results/<name>.json`, one file per part, each
naming the command that produced it and the machine (`bench/report.py` renders them)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "machine", "write_result"]

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(
    name: str,
    argv: list[str] | None,
    info: dict[str, Any],
    figures: dict[str, Any],
    path: Path | None = None,
) -> Path:
    """Write one part's figures with its command and machine; the path written."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["xregion bench", name, *(sys.argv[1:] if argv is None else argv)])
    path.write_text(json.dumps({"command": command, "machine": info, **figures}, indent=2) + "\n")
    print(f"figures written to {path}", flush=True)
    return path


def machine() -> dict[str, Any]:
    """Cores, CPU model and load average at the start: every result file names its machine."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "model": model, "loadavg_at_start": os.getloadavg()}
