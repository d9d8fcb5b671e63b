"""Event signatures (docs/DESIGN.md §9): Ed25519 over `envelope.signing_input`.

A bridge signs every event with its region's private key; `Xr-Sig` carries
`<key-id>:<signature>`, the signature in unpadded base64url. A replayer verifies it against
the trusted public keys of every region and dead-letters anything unsigned, signed by an
unknown key, or altered.

Replay marker: a replayer marks each call it makes with `Xr-Replayed-From: <origin>`,
`Xr-Event-Id` and `Xr-Hlc`; with signing on it adds `Xr-Replayed-Sig: <key-id>:<expires>:<sig>`
(`sign_replay_marker`) over `replay_signing_input(...)`: origin, event id, HLC, method, path
and query, body digest and the expiry (unix seconds), signed with its own key. A bridge
honours the marker (proxies without publishing, forwards exactly those `Xr-*` headers) only
if `verify_replay_marker` accepts it: a valid signature by a replayer key of the bridge's
region, not past its expiry (`MARKER_CLOCK_SKEW_S` of slack). So a client can neither forge a marker
to keep its write from replicating nor pin a version with its own `Xr-Hlc`, and a captured
marker stops working once it expires.

Key files (paths from `[signing]`):

* `private_key_file` (the bridge's key, signs events) and `replayer_private_key_file` (the
  replayer's key, signs replay markers; without it the replayer signs with the bridge's key):
  an Ed25519 private key, PEM (PKCS#8, unencrypted);
* `trusted_keys_file`: TOML, one table per key id under `keys`, naming the region the key
  speaks for and what it may sign, the public key as a PEM block or the base64 text inside one::

      [keys.us-east-1]
      region = "us-east"
      roles = ["bridge"]        # "bridge": events of us-east; "replayer": markers in us-east
      public_key = "MCowBQYDK2VwAyEAT0ENDtS6pe3LX01/MhIkHIWtcsmMoRz0Mwf0ET8c/Aw="

  The older form, `key-id = "<public key>"` directly under `[keys]`, is still read, with a
  warning on every load: its region is the one configured region its id names (`us-east-1` →
  `us-east`; an id naming two configured regions, or none, is an error) and it may sign both
  events and markers, as every key could before roles existed.

An event is only accepted when signed by a `bridge` key of its origin, and a replay marker
only when signed by a `replayer` key of the region it is presented in: a key cannot speak for
another region, and a replayer's key cannot forge its region's events.

`reload_verifier` re-reads the trusted-keys file into a running `Verifier` (SIGHUP): a file
that cannot be used leaves the keys as they were and logs one error.

Errors::

    Exception
     └── SigningError
          ├── KeyFileError      a key file is missing or malformed (at start: exit 2)
          └── SignatureError    .reason: unsigned | unknown_key | wrong_region | wrong_role
                                         | bad_signature | expired (a marker past its expiry)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.envelope import Event, signing_input
from shared.logs import get_logger
from shared.regions import REGION_RE, key_belongs_to
from shared.settings import SigningSettings

__all__ = [
    "MARKER_CLOCK_SKEW_S",
    "KeyFileError",
    "ReplayMarker",
    "Role",
    "SignatureError",
    "Signer",
    "SigningError",
    "TrustedKey",
    "Verifier",
    "load_signer",
    "load_verifier",
    "parse_trusted_keys",
    "reload_verifier",
    "replay_signing_input",
    "sign_replay_marker",
    "verify_replay_marker",
]

SignatureReason = Literal[
    "unsigned", "unknown_key", "wrong_region", "wrong_role", "bad_signature", "expired"
]
Role = Literal["bridge", "replayer"]
_ROLES: frozenset[Role] = frozenset(get_args(Role))
# A bridge and the replayers of its region read different clocks.
MARKER_CLOCK_SKEW_S = 5.0
_KEY_ID_RE = re.compile(r"[!-9;-~]{1,64}")
_ENTRY_FIELDS = frozenset({"region", "roles", "public_key"})
log = get_logger("xr.signing")


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
class TrustedKey:
    """A public key, the region it speaks for and what it may sign there.

    `region=None` only for an older-form entry read without the configured regions: it then
    speaks for the region its id names (`shared.regions.key_belongs_to`)."""

    public_key: Ed25519PublicKey
    region: str | None
    roles: frozenset[Role] = _ROLES
    legacy: bool = False

    def speaks_for(self, key_id: str, region: str) -> bool:
        if self.region is None:
            return key_belongs_to(key_id, region)
        return self.region == region


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
    """Check an `Xr-Replayed-Sig` value for `marker` (a replayer key of `region`, not expired
    at `now`); returns the key id. Raises SignatureError."""
    if not value:
        raise SignatureError("unsigned", "replay marker without Xr-Replayed-Sig")
    key_id, expires, sig = [*value.split(":", 2), "", ""][:3]
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        raise SignatureError("bad_signature", "replay marker without a valid expiry")
    data = replay_signing_input(marker, expires_at=int(expires))
    signed_by = verifier.verify_bytes(f"{key_id}:{sig}", data, region=region, role="replayer")
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
            raise KeyFileError(f"signing key id {key_id!r}: printable, no ':' or spaces")
        self.key_id = key_id
        self._key = key

    def sign_bytes(self, data: bytes) -> str:
        """`<key-id>:<signature>` over `data`."""
        return f"{self.key_id}:{_b64(self._key.sign(data))}"

    def sign(self, event: Event) -> Event:
        """`event` with its `sig` set."""
        return dataclasses.replace(event, sig=self.sign_bytes(signing_input(event)))


class Verifier:
    """Checks signatures against the trusted public keys, by key id.

    A bare public key as a value is an older-form entry: the region its id names, any role."""

    def __init__(self, keys: Mapping[str, TrustedKey | Ed25519PublicKey]) -> None:
        self._keys = {
            key_id: key if isinstance(key, TrustedKey) else TrustedKey(key, None, legacy=True)
            for key_id, key in keys.items()
        }

    @property
    def keys(self) -> Mapping[str, TrustedKey]:
        return dict(self._keys)

    def replace_keys(self, other: Verifier) -> None:
        """Trust `other`'s keys from now on (a reload); one assignment, so a check in
        progress sees the old set or the new one, never a mix."""
        self._keys = other._keys

    def verify_bytes(self, sig: str | None, data: bytes, *, region: str, role: Role) -> str:
        """Check a `<key-id>:<signature>` value over `data` made by a `role` key of `region`;
        returns the key id."""
        if not sig:
            raise SignatureError("unsigned", "no signature")
        key_id, _, encoded = sig.partition(":")
        key = self._keys.get(key_id)
        if key is None:
            raise SignatureError("unknown_key", f"signed by unknown key {key_id[:64]!r}")
        if not key.speaks_for(key_id, region):
            raise SignatureError("wrong_region", f"key {key_id!r} cannot sign for {region!r}")
        if role not in key.roles:
            raise SignatureError("wrong_role", f"key {key_id!r} is not a {role} key")
        try:
            key.public_key.verify(_unb64(encoded), data)
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise SignatureError("bad_signature", f"bad signature by {key_id!r}") from exc
        return key_id

    def verify(self, event: Event) -> str:
        """Check an event's `sig` (a bridge key of its origin); returns the signing key id."""
        return self.verify_bytes(
            event.sig, signing_input(event), region=event.origin, role="bridge"
        )


def load_signer(settings: SigningSettings, role: Role = "bridge") -> Signer | None:
    """The signer of `role` (a replayer without its own key signs with the bridge's), or None
    when signing is off. Raises KeyFileError."""
    if settings.mode == "off":
        return None
    key_id, path = settings.key_id, settings.private_key_file
    if role == "replayer" and settings.replayer_key_id is not None:
        key_id, path = settings.replayer_key_id, settings.replayer_private_key_file
    assert key_id is not None  # the settings model requires them with ed25519
    assert path is not None
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return Signer(key_id, key)


def load_verifier(
    settings: SigningSettings, *, regions: Sequence[str] | None = None
) -> Verifier | None:
    """The trusted keys, or None when signing is off. `regions` (every configured region)
    resolves older-form entries to one region each. Raises KeyFileError."""
    if settings.mode == "off":
        return None
    assert settings.trusted_keys_file is not None
    path = settings.trusted_keys_file
    try:
        text = _read(path).decode()
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path}: invalid TOML: {exc}") from None
    verifier = Verifier(parse_trusted_keys(text, source=str(path), regions=regions))
    legacy = sorted(k for k, v in verifier.keys.items() if v.legacy)
    if legacy:
        log.warning(
            "signing.trusted_keys_old_format",
            file=str(path),
            key_ids=legacy,
            fix='write each key as [keys."<id>"] with region, roles and public_key '
            "(docs/SECURITY.md); until then these keys may sign events and replay markers",
        )
    both = sorted(k for k, v in verifier.keys.items() if not v.legacy and v.roles == _ROLES)
    if both:
        log.warning(
            "signing.key_signs_events_and_markers",
            file=str(path),
            key_ids=both,
            note="whoever holds the replayer's copy of such a key can forge its region's events; "
            "give the replayers their own keys (docs/SECURITY.md)",
        )
    return verifier


def parse_trusted_keys(
    text: str, *, source: str = "trusted keys", regions: Sequence[str] | None = None
) -> dict[str, TrustedKey]:
    """The entries of a trusted-keys file (module docstring). Raises KeyFileError."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeyFileError(f"{source}: invalid TOML: {exc}") from None
    keys = table.get("keys")
    if not isinstance(keys, dict) or not keys:
        raise KeyFileError(f"{source}: expected a [keys] table with one entry per key id")
    return {str(k): _entry(f"{source}: keys.{k}", str(k), v, regions) for k, v in keys.items()}


def _entry(where: str, key_id: str, value: object, regions: Sequence[str] | None) -> TrustedKey:
    if not _KEY_ID_RE.fullmatch(key_id):
        raise KeyFileError(f"{where}: a key id is printable, without ':' or spaces")
    if isinstance(value, str):
        return TrustedKey(_public_key(where, value), _legacy_region(where, key_id, regions),
                          legacy=True)  # fmt: skip
    if not isinstance(value, dict):
        raise KeyFileError(f"{where}: expected a table with region, roles and public_key")
    unknown = sorted(set(value) - _ENTRY_FIELDS)
    if unknown:
        raise KeyFileError(f"{where}: unknown field {unknown[0]!r}")
    region, roles, public = value.get("region"), value.get("roles"), value.get("public_key")
    if not isinstance(region, str) or not REGION_RE.fullmatch(region):
        raise KeyFileError(f"{where}.region: expected a region name")
    if not isinstance(roles, list) or not roles or not set(roles) <= _ROLES:
        raise KeyFileError(f"{where}.roles: expected a list of 'bridge' and/or 'replayer'")
    if not isinstance(public, str):
        raise KeyFileError(f"{where}.public_key: expected the public key text")
    return TrustedKey(_public_key(where, public), region, frozenset(roles))


def _legacy_region(where: str, key_id: str, regions: Sequence[str] | None) -> str | None:
    """The one configured region an older-form key id names; never a guess between two."""
    if regions is None:
        return None
    named = [r for r in regions if key_belongs_to(key_id, r)]
    if len(named) != 1:
        problem = f"names regions {named}" if named else "names no configured region"
        raise KeyFileError(
            f"{where}: the key id {problem}: give the entry an explicit region "
            f'([keys."{key_id}"] region = ..., roles = [...], public_key = ...)'
        )
    return named[0]


def _public_key(where: str, value: str) -> Ed25519PublicKey:
    text = value.strip()
    if not text.startswith("-----BEGIN"):
        text = f"-----BEGIN PUBLIC KEY-----\n{text}\n-----END PUBLIC KEY-----\n"
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{where}: not a public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{where}: not an Ed25519 public key")
    return key


def reload_verifier(
    verifier: Verifier, settings: SigningSettings, *, regions: Sequence[str] | None = None
) -> bool:
    """Re-read the trusted-keys file into `verifier`. A file that cannot be used keeps the
    keys `verifier` had and logs one error; returns whether the keys were replaced."""
    try:
        fresh = load_verifier(settings, regions=regions)
    except KeyFileError as exc:
        log.error("signing.trusted_keys_reload_failed", error=str(exc),
                  kept_key_ids=sorted(verifier.keys))  # fmt: skip
        return False
    if fresh is None:
        return False
    verifier.replace_keys(fresh)
    log.info("signing.trusted_keys_reloaded", file=str(settings.trusted_keys_file),
             key_ids=sorted(verifier.keys))  # fmt: skip
    return True


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
