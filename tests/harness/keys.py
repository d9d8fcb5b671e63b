"""Ed25519 signing keys as the services read them: private key files, trusted-keys files and
entries, the `[signing]` table that uses them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["make_keys", "private_pem", "trusted_entry"]


def private_pem(path: Path, key: Ed25519PrivateKey) -> Path:
    """Write `key` to `path` as an unencrypted PKCS#8 PEM file; returns `path`."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def trusted_entry(key_id: str, key: Ed25519PrivateKey, region: str, role: str) -> str:
    """The trusted-keys file's table for `key`'s public half: its region and one role."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return (
        f'[keys."{key_id}"]\nregion = "{region}"\nroles = ["{role}"]\n'
        f'public_key = "{base64.b64encode(der).decode()}"\n'
    )


def make_keys(directory: Path, key_id: str = "us-east-1") -> dict[str, Any]:
    """A fresh Ed25519 key pair on disk; returns the `[signing]` table that uses it."""
    key = Ed25519PrivateKey.generate()
    private = private_pem(directory / f"{key_id}.pem", key)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    trusted = directory / "trusted.toml"
    trusted.write_text(f'[keys]\n"{key_id}" = """{public.decode()}"""\n')
    return {
        "mode": "ed25519",
        "key_id": key_id,
        "private_key_file": str(private),
        "trusted_keys_file": str(trusted),
    }
