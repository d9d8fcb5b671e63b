"""`xregion bench [NAME] [ARGS...]`: the benchmarks of the replication path (docs/DESIGN.md §7).

The benchmarks are scripts in the source tree's `bench/` directory (they start their own NATS
super-cluster, services and load, and report ratios measured side by side in one run; see each
script's docstring). They are not part of the installed package: this command runs them from
the checkout the package was installed from (`pip install -e .`, as `make install` does), and
says so in one line when there is none.

* `NAME`: `bridge`, `broadcaster`, `replayer`, or `all` (the default, in that order);
* `ARGS`: passed to the script as they are (`xregion bench bridge --rounds 3`,
  `xregion bench replayer --help`); only with one `NAME`.

Each script runs with this interpreter, its output straight to the terminal. The exit status
is the first failing script's, 0 when all succeeded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from services.xregion.cli.common import EXIT_USAGE, CommandError, Subparsers

__all__ = ["BENCHES", "bench_scripts", "register", "run"]

SUMMARY = "benchmarks of the replication path (bridge, broadcaster, replayer)"

BENCHES = ("bridge", "broadcaster", "replayer")
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
    for script in scripts:
        if len(scripts) > 1:
            print(f"== {script.relative_to(_SOURCE_ROOT)}", flush=True)
        code = subprocess.call([sys.executable, str(script), *args.args])
        if code != 0:  # negative: killed by that signal
            raise CommandError(f"{script.name} exited with {code}", exit_code=max(code, 1))
    return 0
