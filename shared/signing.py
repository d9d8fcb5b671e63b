"""Event signatures (docs/DESIGN.md §9): Ed25519 over `envelope.signing_input`.

A bridge signs every event with its region's private key; `Xr-Sig` carries
`<key-id>:<signature>`, the signature in unpadded base64url. A replayer verifies it against
the trusted public keys of every region and dead-letters anything unsigned, signed by an
unknown key, or altered.

Replay marker: a replayer marks each call it makes with `Xr-Replayed-From: <origin>`,
`Xr-Event-Id` and `Xr-Hlc`; with signing on it adds `Xr-Replayed-Sig: <key-id>:<expires>:<sig>`
(`sign_replay_marker`) over `replay_signing_input(...)`: origin, event id, HLC, method, path
and query, body digest and the expiry (unix seconds), signed with its own region's key. A
bridge honours the marker (proxies without publishing, forwards exactly those `Xr-*` headers)
only if `verify_replay_marker` accepts it: a valid signature by a key of the bridge's region,
not past its expiry (`MARKER_CLOCK_SKEW_S` of slack). So a client can neither forge a marker
to keep its write from replicating nor pin a version with its own `Xr-Hlc`, and a captured
marker stops working once it expires.

Key files (paths from `[signing]`):

* `private_key_file`: an Ed25519 private key, PEM (PKCS#8, unencrypted);
* `trusted_keys_file`: TOML, one entry per key id under `[keys]`, the value being the public
  key as a PEM block or as the base64 text inside one::

      [keys]
      us-east-1 = "MCowBQYDK2VwAyEAT0ENDtS6pe3LX01/MhIkHIWtcsmMoRz0Mwf0ET8c/Aw="

Errors::

    Exception
     └── SigningError
          ├── KeyFileError      a key file is missing or malformed (at start: exit 2)
          └── SignatureError    .reason: unsigned | unknown_key | wrong_region | bad_signature
                                         | expired (a replay marker past its expiry)

Key ids name their region (`shared.regions.key_belongs_to`: `us-east-1` is a key of `us-east`).
An event is only accepted when signed by a key of its origin, and a replay marker only when
signed by a key of the region it is presented in, so a key cannot speak for another region.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.envelope import Event, signing_input
from shared.regions import key_belongs_to
from shared.settings import SigningSettings

__all__ = [
    "MARKER_CLOCK_SKEW_S",
    "KeyFileError",
    "ReplayMarker",
    "SignatureError",
    "Signer",
    "SigningError",
    "Verifier",
    "load_signer",
    "load_verifier",
    "replay_signing_input",
    "sign_replay_marker",
    "verify_replay_marker",
]

SignatureReason = Literal["unsigned", "unknown_key", "wrong_region", "bad_signature", "expired"]
# A bridge and the replayers of its region read different clocks.
MARKER_CLOCK_SKEW_S = 5.0
_KEY_ID_RE = re.compile(r"[!-9;-~]{1,64}")


class SigningError(Exception):
    """Base of the signing errors."""


class KeyFileError(SigningError):
    """A key file cannot be used; `str()` names the file and the problem."""


class SignatureError(SigningError):
    """A signature is missing, from an unknown key, or does not match."""

    def __init__(self, reason: SignatureReason, message: str) -> None:
        super().__init__(message)
        self.reason: SignatureReason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayMarker:
    """What a replay marker vouches for: the replayed event and the request as sent."""

    origin: str
    event_id: str
    hlc: str
    method: str
    path: str  # path and query as sent on the wire
    body: bytes


def replay_signing_input(marker: ReplayMarker, *, expires_at: int) -> bytes:
    """The bytes a replay marker's signature covers (same line format as `signing_input`)."""
    return (
        f"replay-of={marker.event_id}\norigin={marker.origin}\nhlc={marker.hlc}\n"
        f"method={marker.method}\npath={marker.path}\n"
        f"body-sha256={hashlib.sha256(marker.body).hexdigest()}\nexpires={expires_at}"
    ).encode()


def sign_replay_marker(signer: Signer, marker: ReplayMarker, *, expires_at: int) -> str:
    """The `Xr-Replayed-Sig` value: `<key-id>:<expires_at>:<signature>`."""
    key_id, _, sig = signer.sign_bytes(
        replay_signing_input(marker, expires_at=expires_at)
    ).partition(":")
    return f"{key_id}:{expires_at}:{sig}"


def verify_replay_marker(
    verifier: Verifier, value: str | None, marker: ReplayMarker, *, region: str, now: float
) -> str:
    """Check an `Xr-Replayed-Sig` value for `marker` (a key of `region`, not expired at
    `now`); returns the key id. Raises SignatureError."""
    if not value:
        raise SignatureError("unsigned", "replay marker without Xr-Replayed-Sig")
    key_id, expires, sig = [*value.split(":", 2), "", ""][:3]
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        raise SignatureError("bad_signature", "replay marker without a valid expiry")
    data = replay_signing_input(marker, expires_at=int(expires))
    signed_by = verifier.verify_bytes(f"{key_id}:{sig}", data, region=region)
    if now > int(expires) + MARKER_CLOCK_SKEW_S:
        raise SignatureError("expired", f"replay marker expired {now - int(expires):.0f} s ago")
    return signed_by


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """Signs with one private key under one key id."""

    def __init__(self, key_id: str, key: Ed25519PrivateKey) -> None:
        if not _KEY_ID_RE.fullmatch(key_id):
            raise KeyFileError(f"signing.key_id {key_id!r}: printable, no ':' or spaces")
        self.key_id = key_id
        self._key = key

    def sign_bytes(self, data: bytes) -> str:
        """`<key-id>:<signature>` over `data`."""
        return f"{self.key_id}:{_b64(self._key.sign(data))}"

    def sign(self, event: Event) -> Event:
        """`event` with its `sig` set."""
        return dataclasses.replace(event, sig=self.sign_bytes(signing_input(event)))


class Verifier:
    """Checks signatures against the trusted public keys, by key id."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    def verify_bytes(self, sig: str | None, data: bytes, *, region: str) -> str:
        """Check a `<key-id>:<signature>` value over `data` made by a key of `region`;
        returns the key id."""
        if not sig:
            raise SignatureError("unsigned", "no signature")
        key_id, _, encoded = sig.partition(":")
        key = self._keys.get(key_id)
        if key is None:
            raise SignatureError("unknown_key", f"signed by unknown key {key_id[:64]!r}")
        if not key_belongs_to(key_id, region):
            raise SignatureError("wrong_region", f"key {key_id!r} cannot sign for {region!r}")
        try:
            key.verify(_unb64(encoded), data)
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise SignatureError("bad_signature", f"bad signature by {key_id!r}") from exc
        return key_id

    def verify(self, event: Event) -> str:
        """Check an event's `sig` (a key of its origin); returns the key id that signed it."""
        return self.verify_bytes(event.sig, signing_input(event), region=event.origin)


def load_signer(settings: SigningSettings) -> Signer | None:
    """The region's signer, or None when signing is off. Raises KeyFileError."""
    if settings.mode == "off":
        return None
    assert settings.key_id is not None  # the settings model requires both with ed25519
    assert settings.private_key_file is not None
    path = settings.private_key_file
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return Signer(settings.key_id, key)


def load_verifier(settings: SigningSettings) -> Verifier | None:
    """The trusted keys, or None when signing is off. Raises KeyFileError."""
    if settings.mode == "off":
        return None
    assert settings.trusted_keys_file is not None
    path = settings.trusted_keys_file
    try:
        table = tomllib.loads(_read(path).decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeyFileError(f"{path}: invalid TOML: {exc}") from None
    keys = table.get("keys")
    if not isinstance(keys, dict) or not keys:
        raise KeyFileError(f"{path}: expected a [keys] table of key id = public key")
    return Verifier({str(key_id): _public_key(path, str(key_id), v) for key_id, v in keys.items()})


def _public_key(path: Path, key_id: str, value: object) -> Ed25519PublicKey:
    if not isinstance(value, str) or not _KEY_ID_RE.fullmatch(key_id):
        raise KeyFileError(f"{path}: keys.{key_id}: expected a key id and a public key text")
    text = value.strip()
    if not text.startswith("-----BEGIN"):
        text = f"-----BEGIN PUBLIC KEY-----\n{text}\n-----END PUBLIC KEY-----\n"
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: keys.{key_id}: not a public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: keys.{key_id}: not an Ed25519 public key")
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
