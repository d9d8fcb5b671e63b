"""Regenerate the measured parts of docs/PERFORMANCE.md from bench/results/<name>.json.

    .venv/bin/python bench/report.py [--results bench/results] [--doc docs/PERFORMANCE.md]

(`xregion bench` runs it after the benchmarks.) The document is prose written by hand around
generated blocks: each part's block sits between `<!-- bench:<name> begin -->` and
`<!-- bench:<name> end -->` and holds the machine, the exact command and the tables of that
part's latest result file; everything outside the blocks is kept as it is. A part with a
result file but no block in the document gets a new section (before "Measurements behind
the code's shape"); a block whose result file is missing is left alone.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PARTS", "render_block", "update_document"]

ROOT = Path(__file__).resolve().parents[1]
_TAIL_HEADING = "## Measurements behind the code's shape"
Json = dict[str, Any]


def _table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    align = ["---" if i == 0 else "---:" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def _median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


# --------------------------------------------------------------------------- parts


def _bridge(result: Json) -> list[str]:
    rows = result["rows"]
    groups: dict[tuple[str, str, str], list[Json]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["path"], row["mode"]), []).append(row)

    def rate(kind: str, path: str, mode: str) -> float:
        return _median(r["rps"] for r in groups[kind, path, mode])

    lines = _table(
        ["writes", "path", "load", "writes/s", "x floor", "x direct", "p50 ms", "p99 ms",
         "CPU ms/write: bridge", "upstream", "nats", "load gen", "load gen share"],
        [
            (
                "echo upstream" if kind == "writes" else "demo service", path,
                "wrk, 32 conn." if mode == "max" else f"{group[0]['rps']:.0f}/s paced",
                _median(r["rps"] for r in group),
                rate(kind, path, mode) / rate(kind, "floor", mode) if mode == "max" else None,
                rate(kind, path, mode) / rate(kind, "direct", mode) if mode == "max" else None,
                _median(r["p50_ms"] for r in group), _median(r["p99_ms"] for r in group),
                _median(r["cpu_per_1k"]["bridge"] for r in group),
                _median(r["cpu_per_1k"]["upstream"] for r in group),
                _median(r["cpu_per_1k"]["nats"] for r in group),
                _median(r["cpu_per_1k"]["loadgen"] for r in group),
                _median(r["loadgen_share"] for r in group),
            )
            for (kind, path, mode), group in groups.items()
            if (kind, "floor", mode) in groups
        ],
    )  # fmt: skip
    v = result["verdict"]
    lines += [
        "",
        f"* echo upstream, bridge / floor: {v['bridge_x_floor']:.2f}x (target >= 0.8: "
        f"{_met(v['bridge_x_floor'] >= 0.8)}); floor / direct {v['floor_x_direct']:.2f}x; "
        f"with version records / without: {v['versions_x']:.2f}x",
        f"* demo service, bridge / direct: {v['store_bridge_x_direct']:.2f}x (target >= 0.9: "
        f"{_met(v['store_bridge_x_direct'] >= 0.9)}); floor / direct "
        f"{v['store_floor_x_direct']:.2f}x",
        f"* added p50 at the fixed rate (minus direct's): bridge {v['added_p50_bridge_ms']:.3f} "
        f"ms, floor {v['added_p50_floor_ms']:.3f} ms; beyond the floor "
        f"{v['added_p50_beyond_floor_ms']:.3f} ms (target <= 0.2: "
        f"{_met(v['added_p50_beyond_floor_ms'] <= 0.2)})",
        f"* wrk used at most {v['wrk_share_max']:.0%} of one core",
    ]
    return lines


def _broadcaster(result: Json) -> list[str]:
    rows = result["rows"]
    rate = {(r["delay_ms"], r["mode"], r["target"], r["round"]): r["events_per_s"] for r in rows}
    groups: dict[tuple[int, str, str], list[Json]] = {}
    for row in rows:
        groups.setdefault((row["delay_ms"], row["mode"], row["target"]), []).append(row)

    def ratio(group: list[Json], mode: str, target: str) -> float | None:
        """Median over rounds of each round's rate over that round's `mode` rate."""
        bases = [rate.get((r["delay_ms"], mode, target, r["round"])) for r in group]
        found = [r["events_per_s"] / b for r, b in zip(group, bases, strict=True) if b]
        return _median(found) if found else None

    table = []
    for (delay, mode, target), group in groups.items():
        cpus = [r["cpu_s_per_1k"] for r in group if r["cpu_s_per_1k"] is not None]
        # `both` forwards to two targets from one process: its floor does too.
        floor = ratio(group, *(("floor-both", target) if "both" in mode else ("floor", "eu-west")))
        one = ratio(group, "one", target)
        table.append(
            (
                f"{delay} ms", mode, target, _median(r["events_per_s"] for r in group),
                floor if mode != "native" else None, one if mode.startswith("hot") else None,
                _median(cpus) if cpus else None, len(group),
            )
        )  # fmt: skip
    return _table(
        ["delay", "mode", "target", "events/s", "x floor", "x one", "CPU s/1k", "rounds"], table
    )


def _replayer(result: Json) -> list[str]:
    return _table(
        ["processes", "events", "events/s", "per process", "replayer CPU s/1k", "nats CPU s/1k",
         "service CPU s/1k", "problems"],
        [
            (r["instances"], r["events"], r["events_per_s"], r["per_process"], r["cpu_s_per_1k"],
             r["nats_cpu_s_per_1k"], r["service_cpu_s_per_1k"], len(r["problems"]))
            for r in result["rows"]
        ],
    )  # fmt: skip


def _busiest(row: Json, count: int = 3) -> str:
    ranked = sorted(row["cpu_share"].items(), key=lambda kv: -kv[1])[:count]
    return ", ".join(f"{name} {share:.2f}" for name, share in ranked)


def _cores(row: Json) -> str:
    cores = row.get("machine_cores")
    return f"{cores['busy']:.2f} / {cores['iowait']:.2f}" if cores else "-"


def _lag(result: Json) -> list[str]:
    chained = [r for r in result["rows"] if r["delay_ms"] is not None]
    alone = [r for r in result["rows"] if r["delay_ms"] is None]
    lines = _table(
        ["delay", "load", "writes/s", "writes", "lag p50 ms", "p99 ms", "max ms",
         "not replayed", "client p50 ms", "busiest processes (share of a core)",
         "load gen share", "machine busy / iowait (cores)", "load avg"],
        [
            (f"{r['delay_ms']} ms", r["phase"] if "idle" in r["phase"] else f"{r['phase']}/s",
             r["rate"], r["writes"], r["lag"]["all"]["p50_ms"], r["lag"]["all"]["p99_ms"],
             r["lag"]["all"]["max_ms"], sum(r["missing"].values()), r["client_p50_ms"],
             _busiest(r), r["loadgen_cpu_share"], _cores(r), r["loadavg_1m"])
            for r in chained
        ],
    )  # fmt: skip
    for r in alone:
        lines += [
            "",
            f"The origin's demo service alone, driven straight at "
            f"{r['phase'].removeprefix('service alone ')} writes/s (no xregion): "
            f"{r['rate']:.0f} writes/s, client p50 {r['client_p50_ms']} ms, "
            f"p99 {r['client_p99_ms']} ms.",
        ]
    lines += ["", *_lag_targets(chained)]
    return lines


def _lag_targets(rows: list[Json]) -> list[str]:
    found = []
    floors = [r["lag"]["all"]["p50_ms"] for r in rows if r["phase"] == "floor idle"]
    floor = f"; the floor's (`floor idle`, bench/floor.py) {floors[0]} ms" if floors else ""
    for r in rows:
        lag = r["lag"]["all"]
        if lag["p50_ms"] is None:
            continue
        if r["phase"] == "idle" and r["delay_ms"] == 0:
            found.append(
                f"* idle single writes p50 <= 3 ms at 0 ms: {lag['p50_ms']} ms, "
                f"{_met(lag['p50_ms'] <= 3)}{floor}"
            )
        if r["phase"] == "100":
            limit = r["delay_ms"] + 25
            found.append(
                f"* p99 <= delay + 25 ms at 100 writes/s, {r['delay_ms']} ms delay: "
                f"{lag['p99_ms']} ms against {limit} ms, {_met(lag['p99_ms'] <= limit)}"
            )
    return found


def _chain(result: Json) -> list[str]:
    rows = result["rows"]
    lines = _table(
        ["asked writes/s", "writes/s", "writes", "lag p50 ms", "p99 ms", "max ms",
         "not replayed", "CPU ms per write, all processes", "load gen share",
         "machine busy / iowait (cores)", "load avg"],
        [
            (r["target_rate"], r["rate"], r["writes"], r["lag"]["all"]["p50_ms"],
             r["lag"]["all"]["p99_ms"], r["lag"]["all"]["max_ms"], sum(r["missing"].values()),
             r["cpu_ms_per_write_total"], r["loadgen_cpu_share"], _cores(r), r["loadavg_1m"])
            for r in rows
        ],
    )  # fmt: skip
    names = sorted({n for r in rows for n in r["cpu_ms_per_write"]})
    lines += ["", "CPU ms per replicated write, by process:", ""]
    lines += _table(
        ["process", *(f"{r['target_rate']:g}/s" for r in rows)],
        [(n, *(r["cpu_ms_per_write"].get(n) for r in rows)) for n in names],
    )
    for r in rows:
        if r["target_rate"] == 500:
            p99 = r["lag"]["all"]["p99_ms"]
            lines += ["", f"* lag p99 <= 25 ms at 500 writes/s: {p99} ms, {_met(p99 <= 25)}"]
    return lines


def _memory(result: Json) -> list[str]:
    states = result["states"]
    names = sorted({n for values in states.values() for n in values})
    lines = _table(
        ["process (RSS MB)", *states], [(n, *(states[s].get(n) for s in states)) for n in names]
    )
    backlog, verdict = result["backlog"], result["verdict"]
    services = {n: mb for n, mb in verdict["worst_mb"].items() if not n.endswith("nats")}
    worst = max(services, key=services.__getitem__)
    lines += [
        "",
        f"Backlog: {backlog['writes']} writes in {backlog['write_s']} s, drained in "
        f"{backlog['drain_s']} s (every write answered in both targets: {backlog['drained']}).",
        "",
        f"* each service < {verdict['limit_mb']:g} MB in every state: largest "
        f"{worst} {services[worst]:.1f} MB, {_met(not verdict['over_limit'])}",
    ]
    return lines


def _hotpath(result: Json) -> list[str]:
    headers, records = result["medians"]["headers"], result["medians"]["records"]
    quick, task = records["quick"], records["task"]
    table = _table(
        ["step", "before: what it replaced", "after: ours", "after / before"],
        [
            ("received header block of a signed event, µs",
             f"{headers['nats-py']:.1f} (nats-py `_parse_header_lines`)",
             f"{headers['ours']:.1f} (`parse_header_lines`)", headers["ours"] / headers["nats-py"]),
            ("bridge version record of a remembered key, CPU µs",
             f"{task:.1f} (`record` as a task)", f"{quick:.1f} (queued compare-and-set)",
             quick / task),
        ],
    )  # fmt: skip
    return [*table, "", f"Medians of {result['rounds']} alternating rounds, one process."]


PARTS: dict[str, tuple[str, Callable[[Json], list[str]]]] = {
    "bridge": ("Bridge", _bridge),
    "broadcaster": ("Broadcaster", _broadcaster),
    "replayer": ("Replayer", _replayer),
    "lag": ("End-to-end lag", _lag),
    "chain": ("The whole chain", _chain),
    "memory": ("Memory", _memory),
    "hotpath": ("Hot-path steps", _hotpath),
}


def _machine(info: Json) -> str:
    load = info.get("loadavg_at_start")
    at = f", load average {load[0]:.1f} at the start" if load else ""
    return f"{info.get('cores')} cores, {info.get('model') or 'unknown CPU'}{at}"


def render_block(name: str, result: Json) -> str:
    """The generated block of one part (markers included)."""
    _, render = PARTS[name]
    lines = [
        f"<!-- bench:{name} begin -->",
        f"*Generated by `bench/report.py` from `bench/results/{name}.json`.* Machine: "
        f"{_machine(result.get('machine', {}))}. Command: `{result.get('command', '?')}`.",
        "",
        *render(result),
        f"<!-- bench:{name} end -->",
    ]
    return "\n".join(lines)


def update_document(doc: str, results: dict[str, Json]) -> str:
    """`doc` with every part's block replaced (or added) from `results`."""
    for name in PARTS:
        if name not in results:
            continue
        block = render_block(name, results[name])
        pattern = re.compile(rf"<!-- bench:{name} begin -->.*?<!-- bench:{name} end -->", re.DOTALL)
        found = pattern.search(doc)
        if found is not None:
            doc = doc[: found.start()] + block + doc[found.end() :]
            continue
        section = f"## {PARTS[name][0]}\n\n{block}\n\n"
        at = doc.find(_TAIL_HEADING)
        doc = doc[:at] + section + doc[at:] if at >= 0 else doc.rstrip("\n") + "\n\n" + section
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    args = parser.parse_args(argv)
    results = {
        name: json.loads(path.read_text())
        for name in PARTS
        if (path := args.results / f"{name}.json").is_file()
    }
    args.doc.write_text(update_document(args.doc.read_text(), results))
    print(f"{args.doc}: regenerated from {', '.join(results) or 'no result files'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
