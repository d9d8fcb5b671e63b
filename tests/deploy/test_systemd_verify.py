"""The systemd units pass `systemd-analyze verify`, with nothing to say about them.

verify loads each unit as systemd would (the template as xregion@bridge, @broadcaster and
@replayer) and reports unknown keys, values it cannot parse, dependencies it cannot find and
commands that are not executable. It runs in a scratch root (`--root`): the host's own units
(targets like network-online.target) are copied in, the units go to /etc/systemd/system, and
every ExecStart*= program is a stub at its absolute path, since /opt/xregion is not installed
here. verify exits 0 after mere warnings (an unknown key is "ignoring"), so any output fails.

Not checked, since they are resolved when a unit starts: the user and group, the
EnvironmentFile= contents, and the real program's arguments (test_deploy_static.py checks
those against the CLI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.harness.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
INSTANCES = ("bridge", "broadcaster", "replayer")
HOST_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)
_EXEC_RE = re.compile(r"^Exec[A-Za-z]+=[-@:+!|]*(\S+)", re.MULTILINE)
_HINT = "Debian's systemd package"


def unit_names(units_dir: Path) -> list[str]:
    """The units to verify: each template once per service it runs, the rest as they are."""
    names: list[str] = []
    for path in sorted(units_dir.glob("*.service")):
        if path.stem.endswith("@"):
            names += [f"{path.stem}{instance}.service" for instance in INSTANCES]
        else:
            names.append(path.name)
    return names


def _scratch_root(units_dir: Path, root: Path) -> None:
    assert HOST_UNITS is not None, "no systemd unit directory on this machine"
    shutil.copytree(HOST_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    for path in units_dir.glob("*.service"):
        text = path.read_text(encoding="utf-8")
        (system / path.name).write_text(text, encoding="utf-8")
        # A program named without its path stays unstubbed: verify reports it if it is missing.
        for program in (p for p in _EXEC_RE.findall(text) if p.startswith("/")):
            stub = root / program.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
            stub.chmod(0o755)


def verify(units_dir: Path, tmp_path: Path) -> str:
    """What `systemd-analyze verify` says about the units (empty: nothing wrong)."""
    systemd_analyze = require_tool("systemd-analyze", _HINT)
    root = tmp_path / "root"
    _scratch_root(units_dir, root)
    options = [f"--root={root}", "--man=no", "--generators=no"]
    done = subprocess.run(
        [systemd_analyze, "verify", *options, *unit_names(units_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    said = (done.stdout + done.stderr).replace(str(root), "")
    return said if said or done.returncode == 0 else f"exit status {done.returncode}"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert unit_names(UNITS) == [
        "xregion-provision.service",
        "xregion@bridge.service",
        "xregion@broadcaster.service",
        "xregion@replayer.service",
    ]
    said = verify(UNITS, tmp_path)
    assert said == "", f"systemd-analyze verify deploy/systemd:\n{said}"


# --------------------------------------------------------------------------- the check itself


def _broken_copy(tmp_path: Path, unit: str, old: str, new: str) -> Path:
    copy = tmp_path / "systemd"
    shutil.copytree(UNITS, copy)
    text = (copy / unit).read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    (copy / unit).write_text(text.replace(old, new), encoding="utf-8")
    return copy


# The messages' wording differs between systemd releases: match the unit, line and value only.
def test_a_bad_value_or_unknown_key_is_reported(tmp_path: Path) -> None:
    units = _broken_copy(tmp_path, "xregion@.service", "TimeoutStopSec=45s", "TimeoutStopSec=45x")
    said = verify(units, tmp_path / "a")
    lines = (UNITS / "xregion@.service").read_text(encoding="utf-8").splitlines()
    line = lines.index("TimeoutStopSec=45s") + 1
    assert f"/etc/systemd/system/xregion@.service:{line}: " in said, said
    assert "ignoring: 45x" in said, said
    units = _broken_copy(tmp_path / "b", "xregion-provision.service", "Type=", "Typ=")
    said = verify(units, tmp_path / "b")
    assert "/etc/systemd/system/xregion-provision.service:" in said, said
    assert "Unknown key" in said, said
    assert "'Typ'" in said, said


def test_a_missing_program_is_reported(tmp_path: Path) -> None:
    units = _broken_copy(
        tmp_path, "xregion-provision.service", "ExecStart=/opt/xregion/bin/", "ExecStart="
    )
    said = verify(units, tmp_path)
    assert said.startswith("xregion-provision.service: Command xregion is not executable"), said
