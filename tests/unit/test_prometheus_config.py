"""The Prometheus that `xregion up --prometheus` runs scrapes with the shipped job."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.xregion.local import prometheus
from services.xregion.local.stack import plan_stacks

ROOT = Path(__file__).resolve().parents[2]
SCRAPE = ROOT / "deploy" / "prometheus" / "scrape.yaml"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"


def test_the_scrape_job_is_the_shipped_one(tmp_path: Path) -> None:
    """`up` scrapes with deploy/prometheus's `xregion-vm` job; only the targets file and the
    intervals (seconds instead of 15 s) are its own."""
    shipped = next(
        job for job in yaml.safe_load(SCRAPE.read_text())["scrape_configs"]
        if job["job_name"] == prometheus.JOB
    )  # fmt: skip
    ours = prometheus.config(tmp_path / "t.yaml", RULES)["scrape_configs"][0]
    local = {"scrape_interval", "scrape_timeout"}
    assert {k: v for k, v in ours.items() if k not in local | {"file_sd_configs"}} == {
        k: v for k, v in shipped.items() if k not in local | {"file_sd_configs"}
    }
    assert [set(sd) for sd in ours["file_sd_configs"]] == [
        set(sd) for sd in shipped["file_sd_configs"]
    ]
    assert ours["file_sd_configs"][0]["files"] == [str(tmp_path / "t.yaml")]


def test_targets_name_every_process_with_its_region_and_component(tmp_path: Path) -> None:
    stacks = plan_stacks(
        ["us-east", "eu-west"], base_port=20000, workdir=tmp_path,
        nats={"us-east": ["nats://127.0.0.1:1"], "eu-west": ["nats://127.0.0.1:2"]},
        nats_monitor={"us-east": [], "eu-west": []},
    )  # fmt: skip
    groups = prometheus.targets(stacks)
    assert sorted((g["labels"]["region"], g["labels"]["component"]) for g in groups) == sorted(
        (r, c) for r in ("us-east", "eu-west") for c in ("bridge", "broadcaster", "replayer")
    )
    assert all(len(g["targets"]) == 1 and ":" in g["targets"][0] for g in groups)


def test_the_shipped_rules_are_found_in_a_checkout() -> None:
    assert prometheus.shipped_rules() == RULES
