"""Key rotation without a restart, on a real `xregion replayer` process: SIGHUP re-reads the
trusted-keys file (logging the key ids now trusted); a file that cannot be used keeps the
keys in use and logs one error; the process keeps replaying throughout."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js import JetStreamContext

from services.replayer.service import Replayer
from services.xregion.local.supercluster import free_ports
from shared.settings import Settings, SigningSettings
from shared.signing import Signer
from tests.harness.keys import private_pem, trusted_entry
from tests.harness.wait import wait_until
from tests.harness.xregion_procs import ServiceProcess
from tests.replayer.helpers import ORIGIN, REGION, dead_letters, make_event, publish, region_toml
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def log_lines(proc: ServiceProcess) -> list[dict[str, Any]]:
    lines = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def running(proc: ServiceProcess) -> bool:
    return proc.proc is not None and proc.proc.returncode is None


def logged(proc: ServiceProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(proc) if line.get("event") == event]


async def test_sighup_reloads_trusted_keys_and_a_bad_file_keeps_them(
    js: JetStreamContext, settings: Settings, recorder: Recorder, tmp_path: Path
) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ours, marker_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trusted = tmp_path / "trusted.toml"
    ours_entries = trusted_entry("eu-west-1", ours, REGION, "bridge") + trusted_entry(
        "eu-west-replayer-1", marker_key, REGION, "replayer"
    )
    trusted.write_text(ours_entries + trusted_entry("us-east-1", old, ORIGIN, "bridge"))
    signing = {
        "mode": "ed25519",
        "key_id": "eu-west-1",
        "private_key_file": str(private_pem(tmp_path / "eu-west-1.pem", ours)),
        "replayer_key_id": "eu-west-replayer-1",
        "replayer_private_key_file": str(private_pem(tmp_path / "r.pem", marker_key)),
        "trusted_keys_file": str(trusted),
    }
    admin = f"127.0.0.1:{free_ports(1)[0]}"
    replayer = {"admin_listen": admin, "fetch_timeout_s": 0.3, "retry_total_s": 0.5}
    config = region_toml(settings, tmp_path / "eu-west.toml", replayer=replayer, signing=signing)
    proc = ServiceProcess("replayer", config, f"http://{admin}", tmp_path / "replayer.log")
    await proc.spawn()
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            await wait_until(lambda: proc.ready(http), 30, interval=0.1, message="replayer ready")
        # Signed by a key not trusted yet: refused without a call.
        rotated = Signer("us-east-2", new)
        await publish(js, rotated.sign(make_event("/catalog/before", body=b"1")))
        await wait_until(lambda: dead_letters(js), 20, message="the unknown key dead-lettered")

        trusted.write_text(
            ours_entries
            + trusted_entry("us-east-1", old, ORIGIN, "bridge")
            + trusted_entry("us-east-2", new, ORIGIN, "bridge")
        )
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        [reloaded] = await wait_until(
            lambda: logged(proc, "signing.trusted_keys_reloaded"), 20, message="reload logged"
        )
        assert reloaded["key_ids"] == ["eu-west-1", "eu-west-replayer-1", "us-east-1", "us-east-2"]
        await publish(js, rotated.sign(make_event("/catalog/after", body=b"2")))
        await wait_until(lambda: "/catalog/after" in recorder.values, 20, message="applied")

        trusted.write_text("[keys]\nthis is not toml")
        proc.proc.send_signal(signal.SIGHUP)
        [failed] = await wait_until(
            lambda: logged(proc, "signing.trusted_keys_reload_failed"), 20, message="failure logged"
        )
        assert failed["level"] == "error"
        assert "invalid TOML" in failed["error"]
        assert "us-east-2" in failed["kept_key_ids"]
        await publish(js, rotated.sign(make_event("/catalog/kept", body=b"3")))
        await wait_until(lambda: "/catalog/kept" in recorder.values, 20, message="still applied")
        assert running(proc)
    finally:
        await proc.stop()
    assert proc.proc.returncode == 0, proc.log_tail()
    [letter] = await dead_letters(js)
    assert letter["Xr-Dlq-Reason"] == "bad_signature"
    assert len(logged(proc, "signing.trusted_keys_reloaded")) == 1


async def test_an_event_signed_by_a_replayer_key_is_dead_lettered(
    js: JetStreamContext, settings: Settings, recorder: Recorder, tmp_path: Path
) -> None:
    """A replayer's key signs replay markers only: a stolen one cannot forge its region's
    events. The origin's bridge key still can."""
    bridge_key, replayer_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trusted = tmp_path / "trusted.toml"
    trusted.write_text(
        trusted_entry("us-east-1", bridge_key, ORIGIN, "bridge")
        + trusted_entry("us-east-replayer-1", replayer_key, ORIGIN, "replayer")
    )
    signing = SigningSettings(
        mode="ed25519", key_id="eu-west-1", trusted_keys_file=trusted,
        private_key_file=private_pem(tmp_path / "eu.pem", Ed25519PrivateKey.generate()),
    )  # fmt: skip
    forged = Signer("us-east-replayer-1", replayer_key).sign(make_event("/catalog/forged"))
    genuine = Signer("us-east-1", bridge_key).sign(make_event("/catalog/genuine"))
    await publish(js, forged)
    await publish(js, genuine)
    async with Replayer(settings.model_copy(update={"signing": signing})) as replayer:  # fmt: skip
        await replayer.run_until_idle()
    assert [call.event_id for call in recorder.calls] == [genuine.event_id]
    [letter] = await dead_letters(js)
    assert letter["Xr-Dlq-Reason"] == "bad_signature"
    assert "wrong_role" in letter["Xr-Dlq-Error"]
