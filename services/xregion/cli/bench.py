"""`xregion bench [NAME] [ARGS...]`: the benchmarks of the replication path (docs/DESIGN.md §7).

The benchmarks are scripts in the source tree's `bench/` directory (they start their own NATS
super-cluster, services and load, and report ratios measured side by side in one run; see each
script's docstring). Each writes `bench/results/NAME.json`; after them, `bench/report.py`
regenerates the measured blocks of docs/PERFORMANCE.md from every result file there. They
are not part of the installed package: this command runs them from the checkout the package
was installed from (`pip install -e .`, as `make install` does), and says so in one line when
there is none.

* `NAME`: `bridge`, `broadcaster`, `chain`, `lag`, `memory`, `replayer`, or `all` (the
  default, in that order);
* `ARGS`: passed to the script as they are (`xregion bench bridge --rounds 3`,
  `xregion bench replayer --help`); only with one `NAME`.

Each script runs with this interpreter at a lower CPU priority (`nice`: the machine is
usually shared), its output straight to the terminal. The exit status is the first failing
script's, 0 when all succeeded; the report is regenerated when all succeeded and wrote
results.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from services.xregion.cli.common import EXIT_USAGE, CommandError, Subparsers

__all__ = ["BENCHES", "bench_scripts", "register", "run"]

SUMMARY = (
    "benchmarks of the replication path (bridge, broadcaster, chain, hot-path steps, lag, "
    "memory, replayer)"
)

BENCHES = ("bridge", "broadcaster", "chain", "hotpath", "lag", "memory", "replayer")
_NICENESS = 10
_SOURCE_ROOT = Path(__file__).resolve().parents[3]


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "bench",
        help=SUMMARY,
        description=SUMMARY,
        epilog="Runs bench/bench_NAME.py from the source checkout; `make bench` runs all.",
    )
    parser.add_argument(
        "name",
        nargs="?",
        default="all",
        choices=[*BENCHES, "all"],
        help="which benchmark (default: all, one after the other)",
    )
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="ARGS",
        help="passed to the benchmark script, e.g. --rounds 3 (see NAME --help)",
    )
    parser.set_defaults(handler=run)


def bench_scripts(root: Path, name: str) -> list[Path]:
    """The scripts `name` stands for under `root`; CommandError when they are not there."""
    bench_dir = root / "bench"
    scripts = [bench_dir / f"bench_{b}.py" for b in (BENCHES if name == "all" else (name,))]
    missing = [s.name for s in scripts if not s.is_file()]
    if missing:
        raise CommandError(
            f"{', '.join(missing)} not found in {bench_dir}: the benchmarks ship with the "
            "source, not the package; run this from a checkout installed with `make install`",
            exit_code=EXIT_USAGE,
        )
    return scripts


def run(args: argparse.Namespace) -> int:
    if args.args and args.name == "all":
        raise CommandError("script arguments need one benchmark NAME", exit_code=EXIT_USAGE)
    scripts = bench_scripts(_SOURCE_ROOT, args.name)
    results = _SOURCE_ROOT / "bench" / "results"
    before = _written(results)
    for script in scripts:
        if len(scripts) > 1:
            print(f"== {script.relative_to(_SOURCE_ROOT)}", flush=True)
        code = subprocess.call([sys.executable, str(script), *args.args], preexec_fn=_nice)
        if code != 0:  # negative: killed by that signal
            raise CommandError(f"{script.name} exited with {code}", exit_code=max(code, 1))
    report = _SOURCE_ROOT / "bench" / "report.py"
    if report.is_file() and _written(results) != before:  # not after `--help`, say
        return subprocess.call([sys.executable, str(report)])
    return 0


def _written(results: Path) -> dict[str, int]:
    """When each result file was last written (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}


def _nice() -> None:
    os.nice(_NICENESS)
