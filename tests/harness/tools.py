"""External programs the tests run: skipped on a developer's machine without them, never in CI.

A test that needs `kubectl`, `promtool` or `systemd-analyze` calls `require_tool(name, hint)`
for the program's path. Locally a missing program skips the test with the hint (how to install
it); with `CI` set it fails the test, so a CI run cannot pass by checking less.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

__all__ = ["find_tool", "in_ci", "require_tool"]

_FALSE = frozenset({"", "0", "false", "no", "off"})


def in_ci() -> bool:
    """Is this a CI run (`CI` set to anything but a false-looking value)?"""
    return os.environ.get("CI", "").strip().lower() not in _FALSE


def find_tool(name: str) -> str | None:
    """The program's path: on PATH, else beside this interpreter (installed into the venv)."""
    # `.venv/bin/pytest` runs with .venv/bin off PATH, yet pip installs tools there.
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def require_tool(name: str, hint: str) -> str:
    """The program's path; skips the calling test without it, or fails it under CI."""
    path = find_tool(name)
    if path is not None:
        return path
    message = f"{name} is not installed ({hint})"
    if in_ci():
        pytest.fail(f"{message}; CI runs every test that needs it", pytrace=False)
    pytest.skip(message)
