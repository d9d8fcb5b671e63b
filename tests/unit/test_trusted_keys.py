"""The trusted-keys file: an explicit key -> region and roles map, the older form still read
(with a warning), reloads that keep the old keys on a bad file, and per-role signers."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from shared.envelope import Event, new_traceparent
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.settings import SigningSettings
from shared.signing import (
    KeyFileError,
    ReplayMarker,
    SignatureError,
    Signer,
    Verifier,
    load_signer,
    load_verifier,
    parse_trusted_keys,
    reload_verifier,
    sign_replay_marker,
    verify_replay_marker,
)


def public_text(key: Ed25519PrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def entry(key_id: str, key: Ed25519PrivateKey, region: str, roles: str = '["bridge"]') -> str:
    return (
        f'[keys."{key_id}"]\nregion = "{region}"\nroles = {roles}\n'
        f'public_key = "{public_text(key)}"\n'
    )


def event(origin: str = "eu") -> Event:
    return Event(
        event_id=uuid7_str(),
        origin=origin,
        service="catalog",
        method="PUT",
        path="/catalog/1",
        hlc=HlcStamp(1_700_000_000_000, 0),
        key="/catalog/1",
        body=b"{}",
        trace=new_traceparent(),
        req_headers=(),
    )


def marker() -> ReplayMarker:
    return ReplayMarker("eu-west", uuid7_str(), "001700000000000-000001", "PUT", "/c/1", b"v")


def test_a_key_speaks_for_the_region_the_file_names_not_a_prefix() -> None:
    """`eu-west` is a key of region eu-west, not of region eu (by the id's prefix it was)."""
    eu_west = Ed25519PrivateKey.generate()
    verifier_keys = parse_trusted_keys(entry("eu-west", eu_west, "eu-west"))
    verifier = Verifier(verifier_keys)
    forged = Signer("eu-west", eu_west).sign(event(origin="eu"))
    with pytest.raises(SignatureError) as caught:
        verifier.verify(forged)
    assert caught.value.reason == "wrong_region"
    assert verifier.verify(Signer("eu-west", eu_west).sign(event(origin="eu-west"))) == "eu-west"
    # An id need not name its region at all once the file does.
    plain = Ed25519PrivateKey.generate()
    named = Verifier(parse_trusted_keys(entry("k2026", plain, "eu")))
    assert named.verify(Signer("k2026", plain).sign(event(origin="eu"))) == "k2026"


def test_the_older_form_is_read_with_a_warning_and_never_guesses(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "trusted.toml"
    path.write_text(f'[keys]\n"eu-west" = "{public_text(key)}"\n')
    signing = SigningSettings(
        mode="ed25519", key_id="eu-west", private_key_file=tmp_path / "x.pem",
        trusted_keys_file=path,
    )  # fmt: skip
    with capture_logs() as logs:
        verifier = load_verifier(signing, regions=["eu-west", "us-east"])
    assert verifier is not None
    [warning] = [line for line in logs if line["event"] == "signing.trusted_keys_old_format"]
    assert warning["log_level"] == "warning"
    assert warning["key_ids"] == ["eu-west"]
    assert "region, roles and public_key" in warning["fix"]
    assert verifier.keys["eu-west"].region == "eu-west"
    with pytest.raises(SignatureError) as caught:
        verifier.verify(Signer("eu-west", key).sign(event(origin="us-east")))
    assert caught.value.reason == "wrong_region"
    # Both `eu` and `eu-west` configured: the id names two regions, so it is refused.
    with pytest.raises(KeyFileError, match=r"names regions \['eu', 'eu-west'\].*explicit region"):
        load_verifier(signing, regions=["eu", "eu-west"])
    with pytest.raises(KeyFileError, match="names no configured region"):
        load_verifier(signing, regions=["us-east"])


def test_roles_keep_a_replayer_key_from_signing_events() -> None:
    bridge, replayer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    verifier = Verifier(
        parse_trusted_keys(
            entry("eu-west-1", bridge, "eu-west")
            + entry("eu-west-r1", replayer, "eu-west", '["replayer"]')
        )
    )
    with pytest.raises(SignatureError) as forged:
        verifier.verify(Signer("eu-west-r1", replayer).sign(event(origin="eu-west")))
    assert forged.value.reason == "wrong_role"
    assert verifier.verify(Signer("eu-west-1", bridge).sign(event(origin="eu-west")))

    m = marker()
    good = sign_replay_marker(Signer("eu-west-r1", replayer), m, expires_at=1_000)
    assert verify_replay_marker(verifier, good, m, region="eu-west", now=990) == "eu-west-r1"
    by_bridge = sign_replay_marker(Signer("eu-west-1", bridge), m, expires_at=1_000)
    with pytest.raises(SignatureError) as caught:
        verify_replay_marker(verifier, by_bridge, m, region="eu-west", now=990)
    assert caught.value.reason == "wrong_role"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('region = "eu"\npublic_key = "{k}"\n', r"roles: expected a list"),
        ('region = "eu"\nroles = []\npublic_key = "{k}"\n', r"roles: expected a list"),
        ('region = "eu"\nroles = ["admin"]\npublic_key = "{k}"\n', r"roles: expected a list"),
        ('roles = ["bridge"]\npublic_key = "{k}"\n', r"region: expected a region name"),
        ('region = "EU"\nroles = ["bridge"]\npublic_key = "{k}"\n', r"region: expected a region"),
        ('region = "eu"\nroles = ["bridge"]\n', r"public_key: expected the public key text"),
        ('region = "eu"\nroles = ["bridge"]\npublic_key = "bm90"\n', r"not a public key"),
        ('region = "eu"\nroles = ["bridge"]\npublic_key = "{k}"\nnote = 1\n', "unknown field"),
    ],
)
def test_a_bad_entry_is_refused_with_its_key(body: str, problem: str) -> None:
    key = public_text(Ed25519PrivateKey.generate())
    with pytest.raises(KeyFileError, match=r"keys\.k1") as caught:
        parse_trusted_keys('[keys."k1"]\n' + body.replace("{k}", key), source="t.toml")
    assert caught.match(problem)
    assert "\n" not in str(caught.value)


def test_a_reload_swaps_the_keys_and_a_bad_file_keeps_them(tmp_path: Path) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    path = tmp_path / "trusted.toml"
    path.write_text(entry("eu-1", old, "eu"))
    signing = SigningSettings(
        mode="ed25519", key_id="eu-1", private_key_file=tmp_path / "x.pem", trusted_keys_file=path
    )
    verifier = load_verifier(signing, regions=["eu"])
    assert verifier is not None
    path.write_text(entry("eu-2", new, "eu"))
    with capture_logs() as logs:
        assert reload_verifier(verifier, signing, regions=["eu"])
    assert [(e["event"], e["key_ids"]) for e in logs] == [
        ("signing.trusted_keys_reloaded", ["eu-2"])
    ]
    assert verifier.verify(Signer("eu-2", new).sign(event()))
    with pytest.raises(SignatureError):
        verifier.verify(Signer("eu-1", old).sign(event()))

    path.write_text("[keys]\nnot toml")
    with capture_logs() as logs:
        assert not reload_verifier(verifier, signing, regions=["eu"])
    [error] = logs
    assert error["event"] == "signing.trusted_keys_reload_failed"
    assert error["log_level"] == "error"
    assert "invalid TOML" in error["error"]
    assert error["kept_key_ids"] == ["eu-2"]
    assert verifier.verify(Signer("eu-2", new).sign(event()))


def test_the_replayer_signs_with_its_own_key_when_it_has_one(tmp_path: Path) -> None:
    paths = {}
    for name in ("bridge", "replayer"):
        key = Ed25519PrivateKey.generate()
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    shared_key = SigningSettings(
        mode="ed25519", key_id="eu-1", private_key_file=paths["bridge"],
        trusted_keys_file=tmp_path / "t.toml",
    )  # fmt: skip
    own = shared_key.model_copy(
        update={"replayer_key_id": "eu-replayer-1", "replayer_private_key_file": paths["replayer"]}
    )
    signers = [load_signer(s, role) for s in (shared_key, own) for role in ("bridge", "replayer")]
    assert [s.key_id if s else None for s in signers] == ["eu-1", "eu-1", "eu-1", "eu-replayer-1"]
    with pytest.raises(ValueError, match="go together"):
        SigningSettings(
            mode="ed25519", key_id="eu-1", private_key_file=paths["bridge"],
            trusted_keys_file=tmp_path / "t.toml", replayer_key_id="eu-replayer-1",
        )  # fmt: skip


def test_a_key_trusted_for_both_roles_is_warned_about(tmp_path: Path) -> None:
    """The migration step where bridge and replayer still share a key: accepted, not quietly."""
    path = tmp_path / "trusted.toml"
    path.write_text(entry("eu-1", Ed25519PrivateKey.generate(), "eu", '["bridge", "replayer"]'))
    signing = SigningSettings(
        mode="ed25519", key_id="eu-1", private_key_file=tmp_path / "x.pem", trusted_keys_file=path
    )
    with capture_logs() as logs:
        verifier = load_verifier(signing, regions=["eu"])
    assert verifier is not None
    assert verifier.keys["eu-1"].roles == {"bridge", "replayer"}
    [warning] = logs
    assert (warning["event"], warning["key_ids"]) == (
        "signing.key_signs_events_and_markers",
        ["eu-1"],
    )
