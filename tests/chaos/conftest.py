"""Fixtures of the chaos suite: a fresh `ChaosDeployment` per scenario, always stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest

from tests.harness.chaos_stack import ChaosDeployment

MakeDeployment = Callable[..., Awaitable[ChaosDeployment]]


@pytest.fixture
async def make_deployment(tmp_path: Path) -> AsyncIterator[MakeDeployment]:
    """Start the scenario's deployment (keyword arguments of `ChaosDeployment.start`); every
    deployment started is stopped at teardown, also when the test fails."""
    started: list[ChaosDeployment] = []

    async def make(
        *, skew: Mapping[str, str] | None = None, data_dirs: Mapping[str, Path] | None = None
    ) -> ChaosDeployment:
        deployment = await ChaosDeployment.start(
            tmp_path / f"chaos-{len(started)}", skew=skew, data_dirs=data_dirs
        )
        started.append(deployment)
        return deployment

    try:
        yield make
    finally:
        for deployment in reversed(started):
            await deployment.stop()
