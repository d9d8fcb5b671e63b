"""A Prometheus next to `xregion up --prometheus`, scraping every process of every stack.

It scrapes with the `xregion-vm` job of `deploy/prometheus/scrape.yaml` (file-based discovery,
the `region` and `component` labels the dashboard and the alert rules rely on), pointed at a
targets file that `up` writes, and evaluates the shipped alert rules
(`deploy/prometheus/rules.yaml`) when the checkout has them. Both files are written as JSON,
which is YAML too, so that nothing here needs a YAML library.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.xregion.local.stack import HOST, RegionStack
from services.xregion.local.supervisor import ProcessSpec

__all__ = [
    "JOB",
    "SCRAPE_INTERVAL_S",
    "binary",
    "config",
    "process_spec",
    "shipped_rules",
    "targets",
    "url",
    "write_files",
]

JOB = "xregion-vm"
# Short, so that a local graph moves within seconds; production scrapes every 15 s.
SCRAPE_INTERVAL_S = 2
# Starts after the region stacks are ready and stops before them (group order of ProcessSpec).
_STOP_GROUP = -1
_DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "prometheus"


def binary() -> str | None:
    """The `prometheus` executable on PATH (Debian's `prometheus` package has it), or None."""
    return shutil.which("prometheus")


def shipped_rules() -> Path | None:
    """The alert rules shipped in the checkout's `deploy/prometheus`, if this is a checkout."""
    rules = _DEPLOY / "rules.yaml"
    return rules if rules.is_file() else None


def url(port: int) -> str:
    return f"http://{HOST}:{port}"


def targets(stacks: Sequence[RegionStack]) -> list[dict[str, Any]]:
    """File-discovery target groups: one per process, labelled with its region and role."""
    return [
        {
            "targets": [admin.removeprefix("http://")],
            "labels": {"region": stack.region, "component": component},
        }
        for stack in stacks
        for component, admin in stack.admin_urls().items()
    ]


def config(targets_file: Path, rules: Path | None) -> dict[str, Any]:
    """prometheus.yml: the shipped `xregion-vm` job with this deployment's targets file."""
    interval = f"{SCRAPE_INTERVAL_S}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules)] if rules is not None else [],
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "metrics_path": "/metrics",
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": interval}],
            }
        ],
    }


def write_files(directory: Path, stacks: Sequence[RegionStack]) -> Path:
    """Write the targets file and prometheus.yml under `directory`; returns the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    targets_file = directory / "targets" / "xregion.yaml"
    targets_file.parent.mkdir(exist_ok=True)
    targets_file.write_text(json.dumps(targets(stacks), indent=2) + "\n")
    path = directory / "prometheus.yml"
    path.write_text(json.dumps(config(targets_file, shipped_rules()), indent=2) + "\n")
    return path


def process_spec(executable: str, directory: Path, port: int, logs: Path) -> ProcessSpec:
    """The supervised Prometheus process: its data under `directory`, ready at `/-/ready`."""
    return ProcessSpec(
        name="prometheus",
        argv=(
            executable,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={HOST}:{port}",
            "--storage.tsdb.retention.time=1d",
        ),
        log=logs / "prometheus.log",
        ready_url=f"{url(port)}/-/ready",
        group=_STOP_GROUP,
    )
