"""The bridge's body budget in deploy/ follows the bridge pod's memory limit, and the budget
itself holds what it promises (services/bridge/budget.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from services.bridge.budget import BodyBudget
from shared.settings import ConfigError, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def _bytes(quantity: str) -> int:
    for suffix, factor in _UNITS.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def _bridge_memory_limit() -> int:
    for doc in yaml.safe_load_all((DEPLOY / "base" / "bridge.yaml").read_text()):
        if doc and doc["kind"] == "StatefulSet":
            [container] = doc["spec"]["template"]["spec"]["containers"]
            return _bytes(container["resources"]["limits"]["memory"])
    raise AssertionError("no bridge StatefulSet")


@pytest.mark.parametrize("region", ["us-east", "eu-west", "ap-south"])
def test_overlay_budget_is_a_third_of_the_pod_memory_limit(
    region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("XR_")]:
        monkeypatch.delenv(name)  # the file's own values, not this shell's overrides
    bridge = load_settings(DEPLOY / "overlays" / region / "xregion.toml", env={}).bridge
    limit = _bridge_memory_limit()
    assert bridge.max_replicated_body_bytes <= bridge.max_buffered_body_bytes <= limit // 3
    assert bridge.max_buffered_body_bytes >= limit // 4  # not so small it starves writes
    assert bridge.body_read_timeout_s <= 60


def test_a_budget_smaller_than_one_body_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        'region = "us-east"\nregions = ["us-east"]\n[signing]\nmode = "off"\n'
        "[bridge]\nmax_replicated_body_bytes = 1000\nmax_buffered_body_bytes = 999\n"
    )
    with pytest.raises(ConfigError, match="bridge: max_buffered_body_bytes must be >="):
        load_settings(path, env={})


def test_body_budget_takes_and_gives_back() -> None:
    budget = BodyBudget(10)
    assert budget.take(6)
    assert not budget.take(5)  # refused whole: nothing reserved
    assert budget.used == 6
    assert budget.take(4)
    budget.give_back(6)
    budget.give_back(4)
    assert (budget.used, budget.take(10)) == (0, True)
