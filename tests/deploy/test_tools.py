"""require_tool: a missing program skips a test on a developer's machine and fails it in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.tools import in_ci, require_tool


def _only_on_path(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    monkeypatch.setenv("PATH", str(directory))


def test_a_tool_on_path_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "xr-tool"
    tool.write_text("#!/bin/sh\n", encoding="utf-8")
    tool.chmod(0o755)
    _only_on_path(monkeypatch, tmp_path)
    monkeypatch.setenv("CI", "true")
    assert require_tool("xr-tool", "hint") == str(tool)


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_a_missing_tool_skips_outside_ci(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _only_on_path(monkeypatch, tmp_path)
    monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match=r"xr-no-such-tool is not installed \(how\)"):
        require_tool("xr-no-such-tool", "how")


@pytest.mark.parametrize("value", ["true", "1"])
def test_a_missing_tool_fails_in_ci(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _only_on_path(monkeypatch, tmp_path)
    monkeypatch.setenv("CI", value)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match="CI runs every test that needs it"):
        require_tool("xr-no-such-tool", "how")
