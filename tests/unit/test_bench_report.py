"""bench/report.py renders docs/PERFORMANCE.md's measured blocks from result files and keeps
the prose around them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

_REPORT = Path(__file__).resolve().parents[2] / "bench" / "report.py"
_MACHINE = {"cores": 2, "model": "Test CPU", "loadavg_at_start": [0.5, 0.4, 0.3]}


def _report_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", _REPORT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lag_row(phase: str, p50: float, p99: float) -> dict[str, Any]:
    lag = {"count": 10, "p50_ms": p50, "p99_ms": p99, "max_ms": p99 + 1}
    return {
        "delay_ms": 0, "phase": phase, "rate": 100.0, "writes": 10, "errors": 0,
        "lag": {"all": lag}, "missing": {"eu-west": 0, "ap-south": 1}, "client_p50_ms": 2.0,
        "cpu_share": {"us-east-bridge": 0.4, "eu-west-replayer": 0.3}, "loadgen_cpu_share": 0.05,
        "loadavg_1m": 1.0,
    }  # fmt: skip


def _memory_result(bridge_mb: float) -> dict[str, Any]:
    states = {
        "rest": {"us-east-bridge": 70.0, "us-east-nats": 20.0},
        "load": {"us-east-bridge": bridge_mb},
    }
    over = {"us-east-bridge": bridge_mb} if bridge_mb >= 150 else {}
    worst = {"us-east-bridge": bridge_mb, "us-east-nats": 20.0}
    return {
        "command": "xregion bench memory --backlog 10",
        "machine": _MACHINE,
        "states": states,
        "backlog": {"writes": 10, "write_s": 1.0, "drain_s": 2.0, "drained": True},
        "verdict": {"limit_mb": 150.0, "worst_mb": worst, "over_limit": over},
    }


def test_blocks_are_replaced_or_added_and_the_prose_is_kept(tmp_path: Path) -> None:
    report = _report_module()
    results = tmp_path / "results"
    results.mkdir()
    lag = {
        "command": "xregion bench lag --seconds 1",
        "machine": _MACHINE,
        "rows": [_lag_row("idle", 4.5, 9.0), _lag_row("100", 3.0, 30.0)],
    }
    (results / "lag.json").write_text(json.dumps(lag))
    (results / "memory.json").write_text(json.dumps(_memory_result(160.0)))
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text(
        "# perf\n\nHand-written intro.\n\n## End-to-end lag\n\nWhy it is so.\n\n"
        "<!-- bench:lag begin -->\nold figures\n<!-- bench:lag end -->\n\nAfter the table.\n\n"
        "## Measurements behind the code's shape\n\nkept table\n"
    )

    assert report.main(["--results", str(results), "--doc", str(doc)]) == 0

    text = doc.read_text()
    assert "old figures" not in text
    for prose in ("Hand-written intro.", "Why it is so.", "After the table.", "kept table"):
        assert prose in text
    assert "Command: `xregion bench lag --seconds 1`" in text
    assert "2 cores, Test CPU" in text
    assert "| 0 ms | idle | 100 | 10 | 4.50 | 9.00 | 10.00 | 1 |" in text
    assert "idle single writes p50 <= 3 ms at 0 ms: 4.5 ms, **not met**" in text
    assert "30.0 ms against 25 ms, **not met**" in text
    # memory had no block: a new section, before the closing hand-written one
    memory_at = text.index("## Memory\n\n<!-- bench:memory begin -->")
    assert memory_at < text.index("## Measurements behind the code's shape")
    assert "largest us-east-bridge 160.0 MB, **not met**" in text


def test_a_second_run_changes_only_the_figures(tmp_path: Path) -> None:
    report = _report_module()
    doc = "# perf\n\nIntro.\n"
    first = report.update_document(doc, {"memory": _memory_result(80.0)})
    second = report.update_document(first, {"memory": _memory_result(90.0)})
    assert "**met**" in first
    assert "80.0 MB" in first
    assert "90.0 MB" in second
    assert "80.0 MB" not in second
    assert second.count("<!-- bench:memory begin -->") == 1
    assert second.startswith("# perf\n\nIntro.\n")
