"""Ed25519 event signatures and signed replay markers (shared/signing.py), from key files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.envelope import Event, new_traceparent
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.regions import key_belongs_to
from shared.settings import SigningSettings
from shared.signing import (
    KeyFileError,
    ReplayMarker,
    SignatureError,
    Signer,
    Verifier,
    load_signer,
    load_verifier,
    sign_replay_marker,
    verify_replay_marker,
)
from tests.harness.keys import make_keys


def event(body: bytes = b'{"price": 3}') -> Event:
    return Event(
        event_id=uuid7_str(),
        origin="us-east",
        service="catalog",
        method="PUT",
        path="/catalog/1?x=1",
        hlc=HlcStamp(1_700_000_000_000, 0),
        key="/catalog/1",
        body=body,
        trace=new_traceparent(),
        req_headers=(("content-type", "application/json"),),
    )


def settings(tmp_path: Path, key_id: str = "us-east-1") -> SigningSettings:
    return SigningSettings.model_validate(make_keys(tmp_path, key_id))


def test_signed_event_verifies_and_any_change_breaks_it(tmp_path: Path) -> None:
    conf = settings(tmp_path)
    signer, verifier = load_signer(conf), load_verifier(conf)
    assert signer is not None
    assert verifier is not None
    signed = signer.sign(event())
    assert signed.sig is not None
    assert signed.sig.startswith("us-east-1:")
    assert verifier.verify(signed) == "us-east-1"
    for changed in (
        dataclasses.replace(signed, body=b'{"price": 4}'),
        dataclasses.replace(signed, path="/catalog/2"),
        dataclasses.replace(signed, req_headers=()),
    ):
        with pytest.raises(SignatureError) as caught:
            verifier.verify(changed)
        assert caught.value.reason == "bad_signature"
    with pytest.raises(SignatureError) as unsigned:
        verifier.verify(event())
    assert unsigned.value.reason == "unsigned"


def test_a_key_nobody_trusts_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stranger = load_signer(settings(tmp_path / "a", "mallory"))
    verifier = load_verifier(settings(tmp_path / "b", "us-east-1"))
    assert stranger is not None
    assert verifier is not None
    with pytest.raises(SignatureError) as caught:
        verifier.verify(stranger.sign(event()))
    assert caught.value.reason == "unknown_key"


def test_replay_marker_signature_binds_the_request(tmp_path: Path) -> None:
    conf = settings(tmp_path)
    signer, verifier = load_signer(conf), load_verifier(conf)
    assert signer is not None
    assert verifier is not None
    marker = ReplayMarker(
        origin="eu-west",
        event_id=uuid7_str(),
        hlc="001700000000000-000001",
        method="PUT",
        path="/c/1",
        body=b"v1",
    )
    sig = sign_replay_marker(signer, marker, expires_at=1_000)
    region, now = "us-east", 990.0  # presented to us-east's bridge, in time
    assert verify_replay_marker(verifier, sig, marker, region=region, now=now) == "us-east-1"
    # Every field is covered: body, HLC, event id, and the expiry itself.
    for changed in (
        dataclasses.replace(marker, body=b"v2"),
        dataclasses.replace(marker, hlc="999999999999999-000000"),
        dataclasses.replace(marker, event_id=uuid7_str()),
    ):
        with pytest.raises(SignatureError) as caught:
            verify_replay_marker(verifier, sig, changed, region=region, now=now)
        assert caught.value.reason == "bad_signature"
    key_id, _, rest = sig.partition(":")
    later = f"{key_id}:2000:{rest.partition(':')[2]}"
    with pytest.raises(SignatureError):
        verify_replay_marker(verifier, later, marker, region=region, now=now)
    for broken in ("", "us-east-1:not-base64!", "us-east-1:1000:not-base64!", "us-east-1"):
        with pytest.raises(SignatureError):
            verify_replay_marker(verifier, broken, marker, region=region, now=now)
    with pytest.raises(SignatureError) as expired:
        verify_replay_marker(verifier, sig, marker, region="us-east", now=1_006.0)
    assert expired.value.reason == "expired"
    with pytest.raises(SignatureError) as elsewhere:  # another region's bridge must refuse it
        verify_replay_marker(verifier, sig, marker, region="eu-west", now=990.0)
    assert elsewhere.value.reason == "wrong_region"


def test_a_trusted_key_cannot_sign_for_another_region(tmp_path: Path) -> None:
    keys = {kid: Ed25519PrivateKey.generate() for kid in ("us-east-1", "eu-west-1")}
    verifier = Verifier({kid: key.public_key() for kid, key in keys.items()})
    forged = Signer("eu-west-1", keys["eu-west-1"]).sign(event())  # origin us-east
    with pytest.raises(SignatureError) as caught:
        verifier.verify(forged)
    assert caught.value.reason == "wrong_region"
    assert verifier.verify(Signer("us-east-1", keys["us-east-1"]).sign(event())) == "us-east-1"


@pytest.mark.parametrize(
    ("key_id", "region", "belongs"),
    [
        ("us-east", "us-east", True),
        ("us-east-1", "us-east", True),
        ("us-east-2025a", "us-east", True),
        ("us-east-1", "us", False),  # the suffix may not hold a dash
        ("eu-west-1", "us-east", False),
        ("us-eastern-1", "us-east", False),
        ("us-east-", "us-east", False),
    ],
)
def test_key_ids_name_their_region(key_id: str, region: str, belongs: bool) -> None:
    assert key_belongs_to(key_id, region) is belongs


def test_trusted_keys_as_bare_base64_and_bad_files(tmp_path: Path) -> None:
    conf = settings(tmp_path)
    pem = (tmp_path / "trusted.toml").read_text().split('"""')[1]
    bare = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    (tmp_path / "trusted.toml").write_text(f'[keys]\n"us-east-1" = "{bare}"\n')
    verifier, signer = load_verifier(conf), load_signer(conf)
    assert verifier is not None
    assert signer is not None
    assert verifier.verify(signer.sign(event())) == "us-east-1"

    for content, problem in [
        ("not toml [", "invalid TOML"),
        ("[other]\n", r"expected a \[keys\] table"),
        ('[keys]\nk = "bm90IGEga2V5"\n', "not a public key"),
    ]:
        (tmp_path / "trusted.toml").write_text(content)
        with pytest.raises(KeyFileError, match=problem):
            load_verifier(conf)
    (tmp_path / "us-east-1.pem").write_text("garbage")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        load_signer(conf)
    (tmp_path / "us-east-1.pem").unlink()
    with pytest.raises(KeyFileError, match="cannot read"):
        load_signer(conf)
    off = SigningSettings(mode="off")
    assert load_signer(off) is None
    assert load_verifier(off) is None
