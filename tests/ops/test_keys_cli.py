"""`xregion keys generate|show|rotate`, run as real commands: the key files they write are
what the services load (`shared.signing.load_signer`), and an event signed with a generated
key verifies against the trusted-keys entries they print (`load_verifier`, as every replayer
and broadcaster loads them), for its own region and role only."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from services.xregion.ops.keys import next_key_id
from shared.envelope import Event, new_traceparent
from shared.hlc import Hlc
from shared.ids import uuid7_str
from shared.settings import SigningSettings
from shared.signing import SignatureError, Verifier, load_signer, load_verifier
from tests.harness.toml import write_region_toml
from tests.harness.xregion_procs import run_xregion

pytestmark = pytest.mark.integration

REGIONS = ("us-east", "eu-west")


async def _keys(*args: str) -> dict[str, Any]:
    code, stdout, stderr = await run_xregion("keys", *args, "--output", "json")
    assert code == 0, stderr
    document: dict[str, Any] = json.loads(stdout)
    return document


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def _event(origin: str) -> Event:
    return Event(
        event_id=uuid7_str(), origin=origin, service="catalog", method="PUT",
        path="/catalog/a", hlc=Hlc().now(), key="/catalog/a", body=b'{"x": 1}',
        trace=new_traceparent(),
    )  # fmt: skip


def _signing(document: dict[str, Any], trusted: Path) -> SigningSettings:
    values = tomllib.loads(document["signing"])
    return SigningSettings(mode="ed25519", trusted_keys_file=trusted, **values)


def _region_file(path: Path, region: str, signing: SigningSettings) -> Path:
    table: dict[str, Any] = {
        "mode": "ed25519",
        "key_id": signing.key_id,
        "private_key_file": str(signing.private_key_file),
        "trusted_keys_file": str(signing.trusted_keys_file),
    }
    if signing.replayer_key_id is not None:
        table["replayer_key_id"] = signing.replayer_key_id
        table["replayer_private_key_file"] = str(signing.replayer_private_key_file)
    data = {
        "region": region,
        "regions": list(REGIONS),
        "data_dir": str(path.parent / region),
        "signing": table,
        "services": {"catalog": {"upstream": "http://127.0.0.1:9", "routes": ["/catalog"]}},
    }
    return write_region_toml(path, data)


async def _generated(tmp_path: Path) -> tuple[dict[str, dict[str, Any]], Path]:
    """Both roles' keys of every region, and the trusted-keys file of their entries."""
    documents = {
        region: await _keys("generate", "--region", region, "--dir", str(tmp_path / "keys"))
        for region in REGIONS
    }
    trusted = tmp_path / "trusted.toml"
    trusted.write_text("\n".join(d["trusted_keys"] for d in documents.values()))
    return documents, trusted


def _verifier(trusted: Path, signing: SigningSettings) -> Verifier:
    verifier = load_verifier(
        signing.model_copy(update={"trusted_keys_file": trusted}), regions=REGIONS
    )
    assert verifier is not None
    return verifier


async def test_generated_keys_sign_what_the_printed_entries_verify(tmp_path: Path) -> None:
    documents, trusted = await _generated(tmp_path)
    for region, document in documents.items():
        assert [k["key_id"] for k in document["keys"]] == [f"{region}-1", f"{region}-replayer-1"]
        modes = [_mode(Path(key["private_key_file"])) for key in document["keys"]]
        assert modes == [0o600, 0o600]
    signing = _signing(documents["us-east"], trusted)
    verifier = _verifier(trusted, signing)
    bridge, replayer = load_signer(signing, "bridge"), load_signer(signing, "replayer")
    assert bridge is not None
    assert replayer is not None
    assert verifier.verify(bridge.sign(_event("us-east"))) == "us-east-1"
    with pytest.raises(SignatureError) as wrong_role:
        verifier.verify(replayer.sign(_event("us-east")))
    assert wrong_role.value.reason == "wrong_role"
    with pytest.raises(SignatureError) as wrong_region:
        verifier.verify(bridge.sign(_event("eu-west")))
    assert wrong_region.value.reason == "wrong_region"


async def test_show_says_what_the_trusted_file_trusts(tmp_path: Path) -> None:
    documents, trusted = await _generated(tmp_path)
    config = _region_file(
        tmp_path / "us-east.toml", "us-east", _signing(documents["us-east"], trusted)
    )
    shown = await _keys("show", "--config", str(config))
    assert {k["key_id"]: k["trusted"] for k in shown["keys"]} == {
        "us-east-1": "trusted",
        "us-east-replayer-1": "trusted",
    }
    assert shown["trusted_keys"] == documents["us-east"]["trusted_keys"]
    trusted.write_text(documents["eu-west"]["trusted_keys"])
    shown = await _keys("show", "--config", str(config))
    assert {k["trusted"] for k in shown["keys"]} == {"not trusted"}


async def test_rotate_trusts_both_keys_and_the_new_one_signs(tmp_path: Path) -> None:
    documents, trusted = await _generated(tmp_path)
    signing = _signing(documents["us-east"], trusted)
    config = _region_file(tmp_path / "us-east.toml", "us-east", signing)
    rotation = await _keys("rotate", "--config", str(config), "--role", "bridge")
    old, new = rotation["keys"]
    assert (old["key_id"], new["key_id"]) == ("us-east-1", "us-east-2")
    assert new["roles"] == ["bridge"]
    assert Path(new["private_key_file"]).parent == Path(old["private_key_file"]).parent
    assert len(rotation["steps"]) == 4
    assert "SIGHUP" in rotation["steps"][0]
    # The file of step 1: every other entry, and both of the rotation.
    others = "\n".join(d["trusted_keys"] for r, d in documents.items() if r != "us-east")
    replayer_entry = documents["us-east"]["trusted_keys"].split("\n\n")[1]
    trusted.write_text("\n".join([others, replayer_entry, rotation["trusted_keys"]]))
    verifier = _verifier(trusted, signing)
    old_signer = load_signer(signing)
    new_signer = load_signer(
        signing.model_copy(
            update={"key_id": new["key_id"], "private_key_file": Path(new["private_key_file"])}
        )
    )
    assert old_signer is not None
    assert new_signer is not None
    assert verifier.verify(old_signer.sign(_event("us-east"))) == "us-east-1"
    assert verifier.verify(new_signer.sign(_event("us-east"))) == "us-east-2"


async def test_a_key_file_is_never_overwritten(tmp_path: Path) -> None:
    await _keys("generate", "--region", "us-east", "--role", "bridge", "--dir", str(tmp_path))
    before = (tmp_path / "us-east-1.pem").read_bytes()
    code, _, stderr = await run_xregion(
        "keys", "generate", "--region", "us-east", "--dir", str(tmp_path)
    )
    assert code != 0
    assert "exists already" in stderr
    assert (tmp_path / "us-east-1.pem").read_bytes() == before
    assert not (tmp_path / "us-east-replayer-1.pem").exists()


async def test_a_bridge_key_id_must_name_its_region(tmp_path: Path) -> None:
    code, _, stderr = await run_xregion(
        "keys", "generate", "--region", "us-east", "--role", "bridge",
        "--key-id", "eu-west-1", "--dir", str(tmp_path),
    )  # fmt: skip
    assert code == 2
    assert "does not name region 'us-east'" in stderr
    assert _files(tmp_path) == []


def test_next_key_id() -> None:
    assert next_key_id("us-east-1") == "us-east-2"
    assert next_key_id("us-east-replayer-9") == "us-east-replayer-10"
    assert next_key_id("us-east") == "us-east-2"
