"""Super-clusters with prod's NATS accounts and users, for permission tests."""

from __future__ import annotations

from pathlib import Path

from services.xregion.natsconf import Topology, build_topology, load_topology, replace
from tests.harness.fixtures import DEV_REGIONS

__all__ = ["authed_topology", "password_var"]

ROOT = Path(__file__).resolve().parents[2]


def authed_topology() -> Topology:
    """3 regions x 1 server on loopback with prod's accounts and users (auth without TLS)."""
    return replace(
        build_topology(DEV_REGIONS), auth=load_topology(ROOT / "nats-conf/prod.toml").auth
    )


def password_var(user: str) -> str:
    """prod.toml's naming: user `bridge-us-east` -> `XR_NATS_BRIDGE_US_EAST_PASSWORD`."""
    return "XR_NATS_" + user.upper().replace("-", "_") + "_PASSWORD"
