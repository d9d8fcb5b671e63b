"""Signing key pairs for `xregion keys generate|show|rotate` (docs/SECURITY.md §3, §4).

A key pair is an Ed25519 private key, PEM (PKCS#8, unencrypted, mode 0600), in the file
`<directory>/<key id>.pem`: what `shared.signing.load_signer` reads from
`signing.private_key_file` / `signing.replayer_private_key_file`. Its public half goes to the
trusted-keys file of every region as one entry (`trusted_entry`), in the form
`shared.signing.parse_trusted_keys` reads: the key id, the region it speaks for and its roles.

* `generate_key` writes a new pair (never over an existing file);
* `configured_keys` reads the pairs a region file names, and `trust_status` says whether its
  trusted-keys file already trusts each one as it should;
* `plan_rotation` writes a new key beside the one in use and returns both entries (the
  trusted-keys file must trust old and new while the change rolls out) and the steps.

Errors (`str()` one line for the operator)::

    XregionError
     ├── KeyToolError     a key file cannot be read or written
     └── UsageError       a bad key id, region or role, a file that exists already,
                          signing off in the region file
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.xregion.errors import UsageError, XregionError
from shared.regions import REGION_RE, key_belongs_to
from shared.settings import Settings
from shared.signing import KeyFileError, Role, TrustedKey, load_verifier

__all__ = [
    "ROLES",
    "KeyPair",
    "KeyToolError",
    "Rotation",
    "TrustStatus",
    "configured_keys",
    "default_key_id",
    "generate_key",
    "next_key_id",
    "plan_rotation",
    "read_key",
    "signing_lines",
    "trust_status",
    "trusted_entries",
    "trusted_entry",
]

ROLES: tuple[Role, ...] = get_args(Role)
TrustStatus = Literal["trusted", "not trusted", "other public key", "other region or roles"]
# As shared.signing accepts them: printable, no ':' or spaces.
_KEY_ID_RE = re.compile(r"[!-9;-~]{1,64}")
_NUMBERED_RE = re.compile(r"(?P<stem>.*?)-(?P<n>\d{1,6})")


class KeyToolError(XregionError):
    """A key file cannot be read or written; `str()` names it and the problem."""


@dataclass(frozen=True)
class KeyPair:
    """A private key file and what its trusted-keys entry says."""

    key_id: str
    region: str
    roles: tuple[Role, ...]
    private_key_file: Path
    public_key: str  # base64 of the DER SubjectPublicKeyInfo (the text inside a PEM block)


@dataclass(frozen=True)
class Rotation:
    """A new key beside the one in use, and what to do with them, in order."""

    role: Role
    old: KeyPair
    new: KeyPair
    steps: tuple[str, ...]


def default_key_id(region: str, role: Role, number: int = 1) -> str:
    """`us-east-1` for a bridge key, `us-east-replayer-1` for a replayer key."""
    return f"{region}-{number}" if role == "bridge" else f"{region}-replayer-{number}"


def next_key_id(key_id: str) -> str:
    """The id after `key_id`: its last number plus one (`us-east-1` -> `us-east-2`), or `-2`
    appended to an id without one."""
    numbered = _NUMBERED_RE.fullmatch(key_id)
    if numbered is None:
        return f"{key_id}-2"
    return f"{numbered['stem']}-{int(numbered['n']) + 1}"


def check_key_id(key_id: str, region: str, role: Role) -> None:
    """Raise UsageError unless `key_id` can be the id of a `role` key of `region`."""
    if not REGION_RE.fullmatch(region):
        raise UsageError(f"{region!r} is not a region name")
    if not _KEY_ID_RE.fullmatch(key_id):
        raise UsageError(f"key id {key_id!r}: 1-64 printable characters, no ':' or spaces")
    if role == "bridge" and not key_belongs_to(key_id, region):
        # The settings refuse a bridge key whose id does not name its region.
        raise UsageError(
            f"bridge key id {key_id!r} does not name region {region!r} "
            f"(expected {region!r} or {region}-<suffix without '-'>)"
        )


def generate_key(
    directory: Path, *, key_id: str, region: str, role: Role, roles: Sequence[Role] = ()
) -> KeyPair:
    """Write a new private key to `<directory>/<key_id>.pem` (mode 0600); its entry names
    `roles` (by default `role` alone)."""
    check_key_id(key_id, region, role)
    path = directory / f"{key_id}.pem"
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists already: a key file is never overwritten") from None
    except OSError as exc:
        raise KeyToolError(f"{path}: cannot write: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return KeyPair(key_id, region, tuple(roles) or (role,), path, _public_text(key))


def read_key(path: Path, *, key_id: str, region: str, roles: Sequence[Role]) -> KeyPair:
    """The key pair of an existing private key file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyToolError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyToolError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyToolError(f"{path}: not an Ed25519 private key")
    return KeyPair(key_id, region, tuple(roles), path, _public_text(key))


def _public_text(key: Ed25519PrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def trusted_entry(pair: KeyPair) -> str:
    """The pair's entry of a trusted-keys file (TOML, ends with a newline)."""
    roles = ", ".join(f'"{role}"' for role in pair.roles)
    return (
        f'[keys."{pair.key_id}"]\nregion = "{pair.region}"\nroles = [{roles}]\n'
        f'public_key = "{pair.public_key}"\n'
    )


def trusted_entries(pairs: Sequence[KeyPair]) -> str:
    return "\n".join(trusted_entry(pair) for pair in pairs)


def signing_lines(bridge: KeyPair | None, replayer: KeyPair | None) -> str:
    """The `[signing]` keys of a region file that make its services sign with these keys."""
    lines = []
    if bridge is not None:
        lines += [f'key_id = "{bridge.key_id}"', f"private_key_file = {_path(bridge)}"]
    if replayer is not None:
        lines += [
            f'replayer_key_id = "{replayer.key_id}"',
            f"replayer_private_key_file = {_path(replayer)}",
        ]
    return "\n".join(lines) + "\n"


def _path(pair: KeyPair) -> str:
    text = str(pair.private_key_file.resolve())
    return "'" + text + "'" if "'" not in text else '"' + text.replace("\\", "\\\\") + '"'


# ---------------------------------------------------------------------- a region's keys


def configured_keys(settings: Settings) -> dict[Role, KeyPair]:
    """The key each role of this region signs with (a replayer without its own key signs
    with the bridge's); roles as the trusted-keys file gives them, when it has the key."""
    signing = settings.signing
    if signing.mode == "off":
        raise UsageError("signing is off (signing.mode = 'off'): this region has no keys")
    assert signing.key_id is not None
    assert signing.private_key_file is not None
    trusted = _trusted(settings)
    found: dict[Role, KeyPair] = {}
    for role, key_id, path in _role_keys(settings):
        entry = trusted.get(key_id)
        roles = tuple(sorted(entry.roles)) if entry is not None else (role,)
        if key_id == signing.key_id and signing.replayer_key_id is None and entry is None:
            roles = ROLES  # one key signs events and markers
        found[role] = read_key(path, key_id=key_id, region=settings.region, roles=roles)
    return found


def _role_keys(settings: Settings) -> list[tuple[Role, str, Path]]:
    signing = settings.signing
    assert signing.key_id is not None
    assert signing.private_key_file is not None
    keys: list[tuple[Role, str, Path]] = [("bridge", signing.key_id, signing.private_key_file)]
    if signing.replayer_key_id is not None and signing.replayer_private_key_file is not None:
        keys.append(("replayer", signing.replayer_key_id, signing.replayer_private_key_file))
    else:
        keys.append(("replayer", signing.key_id, signing.private_key_file))
    return keys


def _trusted(settings: Settings) -> dict[str, TrustedKey]:
    try:
        verifier = load_verifier(settings.signing, regions=settings.regions)
    except KeyFileError as exc:
        raise KeyToolError(str(exc)) from None
    return dict(verifier.keys) if verifier is not None else {}


def trust_status(settings: Settings, pair: KeyPair, role: Role) -> TrustStatus:
    """Whether the region's trusted-keys file trusts `pair` as the `role` key of its region."""
    entry = _trusted(settings).get(pair.key_id)
    if entry is None:
        return "not trusted"
    if _public_text_of(entry) != pair.public_key:
        return "other public key"
    if not entry.speaks_for(pair.key_id, pair.region) or role not in entry.roles:
        return "other region or roles"
    return "trusted"


def _public_text_of(entry: TrustedKey) -> str:
    der = entry.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


# ---------------------------------------------------------------------- rotation


def plan_rotation(
    settings: Settings,
    role: Role,
    *,
    directory: Path | None = None,
    key_id: str | None = None,
    config: Path | None = None,
) -> Rotation:
    """Write the new `role` key of the region beside the one in use (in `directory`, by
    default the old key's) and return both and the steps of docs/SECURITY.md §4."""
    old = configured_keys(settings)[role]
    if key_id is None:
        key_id = next_key_id(old.key_id)
        if role == "replayer" and settings.signing.replayer_key_id is None:
            key_id = default_key_id(settings.region, "replayer")
    # A replayer without its own key signs with the bridge's: the new one must do both.
    shared = role == "bridge" and settings.signing.replayer_key_id is None
    new = generate_key(
        directory or old.private_key_file.parent, key_id=key_id, region=old.region, role=role,
        roles=old.roles if shared else (),
    )  # fmt: skip
    return Rotation(role, old, new, _steps(role, old, new, config, shared=shared))


def _steps(
    role: Role, old: KeyPair, new: KeyPair, config: Path | None, *, shared: bool
) -> tuple[str, ...]:
    region_file = str(config) if config is not None else f"{old.region}'s region file"
    prefix = "" if role == "bridge" else "replayer_"
    # Broadcasters sign their canaries with the bridge key.
    services = "bridges and broadcasters" if role == "bridge" else "replayers"
    if shared:
        services = "bridges, broadcasters and replayers (they share the key)"
    signed = "events" if role == "bridge" else "replay markers"
    keep = (
        f'narrow the old key {old.key_id!r} to roles = ["bridge"] in the trusted-keys file '
        "everywhere (it still signs events)"
        if "bridge" in old.roles and role == "replayer"
        else f"remove the old key {old.key_id!r} from the trusted-keys file everywhere"
    )
    return (
        "add both entries above to the trusted-keys file of every region (the old entry is "
        f"unchanged), then SIGHUP every bridge and replayer (broadcasters re-read it when it "
        f"changes); check that each logs signing.trusted_keys_reloaded with {new.key_id!r}",
        f"in {region_file}, set signing.{prefix}key_id = {new.key_id!r} and "
        f"signing.{prefix}private_key_file = {str(new.private_key_file)!r}; restart the "
        f"region's {services} one by one ({signed} signed with the old key stay valid, it is "
        "still trusted)",
        f"{_drained(role)}, {keep}, and SIGHUP again",
        f"delete the old private key {str(old.private_key_file)!r} from every host that had it",
    )


def _drained(role: Role) -> str:
    if role == "replayer":
        # A replay marker is checked once, when its call reaches the bridge, and expires.
        return (
            "once every replayer of the region signs with the new key and replayer.ack_wait_s "
            "has passed (the expiry of the markers it signed with the old one)"
        )
    return (
        "once nothing signed with the old key can still arrive (the replay streams' backlog "
        "is drained; at the latest after streams.max_age_s)"
    )
