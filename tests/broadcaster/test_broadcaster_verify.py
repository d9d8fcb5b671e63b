"""With signing on, the broadcaster forwards only events whose signature verifies: unsigned,
altered, or signed by a key the trusted-keys file does not give to a bridge of this region,
they are dead-lettered in this region's DLQ with why, and the targets never see them. A key
added to the trusted-keys file while the broadcaster runs is trusted from its first event on.
The keys are the ones `xregion keys generate` writes (`services/xregion/ops/keys.py`)."""

from __future__ import annotations

import dataclasses
import functools
import signal
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from structlog.testing import capture_logs

from services.broadcaster.forwarder import FORWARD_REFUSED
from services.broadcaster.service import Broadcaster
from services.broadcaster.verify import TrustedKeysError
from services.xregion.local.supercluster import SuperCluster
from services.xregion.ops.keys import KeyPair, generate_key, trusted_entries
from shared.envelope import HDR_DLQ_ERROR, HDR_DLQ_REASON, HDR_DLQ_TARGET, HDR_EVENT_ID, Event
from shared.regions import dlq_stream, dlq_subject
from shared.settings import Settings, SigningSettings
from shared.signing import Signer, load_signer
from tests.broadcaster.helpers import (
    ORIGIN,
    TARGETS,
    BroadcasterProcess,
    Producer,
    bc_settings,
    count_replay,
    write_region_file,
)
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]


def _signer(pair: KeyPair) -> Signer:
    signing = SigningSettings(
        mode="ed25519", key_id=pair.key_id, private_key_file=pair.private_key_file,
        trusted_keys_file=pair.private_key_file,
    )  # fmt: skip
    signer = load_signer(signing)
    assert signer is not None
    return signer


def _signed_settings(cluster: SuperCluster, bridge: KeyPair, trusted: Path) -> Settings:
    signing = SigningSettings(
        mode="ed25519", key_id=bridge.key_id, private_key_file=bridge.private_key_file,
        trusted_keys_file=trusted,
    )  # fmt: skip
    return bc_settings(cluster).model_copy(update={"signing": signing})


async def _letters(js: JetStreamContext, service: str) -> dict[tuple[str, str], dict[str, str]]:
    """(event id, target) -> headers of every dead letter of `service` in ORIGIN's DLQ."""
    subject = dlq_subject(ORIGIN, ORIGIN, service)
    found: dict[tuple[str, str], dict[str, str]] = {}
    seq = 1
    while True:
        try:
            msg = await js.get_msg(dlq_stream(ORIGIN), seq=seq, subject=subject, next=True)
        except NotFoundError:
            return found
        headers = dict(msg.headers or {})
        found[(headers[HDR_EVENT_ID], headers[HDR_DLQ_TARGET])] = headers
        assert msg.seq is not None
        seq = msg.seq + 1


async def test_only_verified_events_are_forwarded(
    cluster: SuperCluster, js: JetStreamContext, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    bridge = generate_key(keys, key_id="us-east-1", region=ORIGIN, role="bridge")
    replayer = generate_key(keys, key_id="us-east-replayer-1", region=ORIGIN, role="replayer")
    foreign = generate_key(keys, key_id="eu-west-1", region="eu-west", role="bridge")
    untrusted = generate_key(keys, key_id="us-east-9", region=ORIGIN, role="bridge")
    trusted = tmp_path / "trusted.toml"
    trusted.write_text(trusted_entries([bridge, replayer, foreign]))
    producer = Producer(js, "verify-events")

    def event() -> Event:
        return producer.event(len(producer.sent) + 100)

    good = _signer(bridge).sign(event())
    refused = {
        "unsigned": event(),
        "bad_signature": dataclasses.replace(_signer(bridge).sign(event()), body=b'{"n":-1}'),
        "wrong_role": _signer(replayer).sign(event()),
        "wrong_region": _signer(foreign).sign(event()),
        "unknown_key": _signer(untrusted).sign(event()),
    }
    for sent in (good, *refused.values()):
        await producer.send_event(sent)

    with capture_logs() as logs:
        async with Broadcaster(_signed_settings(cluster, bridge, trusted)):
            letters = await wait_until(
                lambda: _all_letters(js, producer.service, 2 * len(refused)),
                20,
                message="a dead letter per refused event and target",
            )
            for target in TARGETS:
                await wait_until(
                    functools.partial(_replayed, js, target, producer.service, 1), 20,
                    message=f"the verified event reached {target}",
                )  # fmt: skip
                assert await count_replay(js, target, producer.service) == 1
            # A key added while it runs (step 1 of a rotation) is trusted at once.
            trusted.write_text(trusted_entries([bridge, replayer, foreign, untrusted]))
            rotated = _signer(untrusted).sign(event())
            await producer.send_event(rotated)
            for target in TARGETS:
                await wait_until(
                    functools.partial(_replayed, js, target, producer.service, 2),
                    20,
                    message=f"the event signed with the added key reached {target}",
                )

    for reason, sent in refused.items():
        for target in TARGETS:
            letter = letters[(sent.event_id, target)]
            assert letter[HDR_DLQ_REASON] == FORWARD_REFUSED
            assert letter[HDR_DLQ_ERROR].startswith(
                f"not forwarded: its signature does not verify ({reason}:"
            ), letter[HDR_DLQ_ERROR]
    assert not any(key[0] in (good.event_id, rotated.event_id) for key in letters)
    lines = [e for e in logs if e["event"] == "broadcaster.unverified_event"]
    assert {(e["event_id"], e["target"]) for e in lines} == set(letters)
    assert any(e["event"] == "signing.trusted_keys_reloaded" for e in logs)


async def test_trusted_keys_that_cannot_be_read_stop_the_start(
    cluster: SuperCluster, tmp_path: Path
) -> None:
    bridge = generate_key(tmp_path, key_id="us-east-1", region=ORIGIN, role="bridge")
    trusted = tmp_path / "trusted.toml"
    trusted.write_text('[keys."us-east-1"]\nregion = "us-east"\n')
    with pytest.raises(TrustedKeysError, match=r"trusted\.toml") as refused:
        async with Broadcaster(_signed_settings(cluster, bridge, trusted)):
            pass
    assert refused.value.exit_code == 2


async def _all_letters(
    js: JetStreamContext, service: str, expected: int
) -> dict[tuple[str, str], dict[str, str]]:
    """The letters once there are `expected` of them, else none (wait_until waits on)."""
    letters = await _letters(js, service)
    return letters if len(letters) >= expected else {}


async def _replayed(js: JetStreamContext, target: str, service: str, expected: int) -> bool:
    return await count_replay(js, target, service) >= expected


async def test_sighup_reloads_the_trusted_keys_and_the_process_goes_on(
    cluster: SuperCluster, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    bridge = generate_key(keys, key_id="us-east-1", region=ORIGIN, role="bridge")
    added = generate_key(keys, key_id="us-east-2", region=ORIGIN, role="bridge")
    trusted = tmp_path / "trusted.toml"
    trusted.write_text(trusted_entries([bridge]))
    config = write_region_file(
        tmp_path / "us-east.toml", _signed_settings(cluster, bridge, trusted)
    )
    process = BroadcasterProcess(config, tmp_path / "broadcaster.log")
    try:
        await process.start()
        trusted.write_text(trusted_entries([bridge, added]))
        assert process.proc is not None
        process.proc.send_signal(signal.SIGHUP)
        reloaded = await wait_until(
            lambda: _reloaded(process), 20, message="the SIGHUP reloaded the trusted keys"
        )
        assert "us-east-2" in str(reloaded)
        assert process.proc.returncode is None, "SIGHUP did not end the broadcaster"
        assert await process.terminate() == 0
    finally:
        await process.stop()


def _reloaded(process: BroadcasterProcess) -> dict[str, object] | None:
    lines = process.log_lines()
    return next((e for e in lines if e.get("event") == "signing.trusted_keys_reloaded"), None)
