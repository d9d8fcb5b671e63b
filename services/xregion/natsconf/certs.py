"""A development CA and certificates for a topology with TLS (`xregion nats-conf certs`).

For development and tests only (docs/SECURITY.md §5): in production, issue certificates from
the organisation's CA or cert-manager. `write_dev_certs(topology, out_dir)` writes, in
`out_dir`:

* `ca.pem`, `ca-key.pem`: a self-signed CA (reused when both files are there already, so a
  topology that gains a server keeps the CA its clients trust);
* `<server>.pem`, `<server>-key.pem` per server of the topology: signed by the CA, with every
  name the server is dialed at (its host, and `localhost`/`127.0.0.1` for a loopback one) and
  both `serverAuth` and `clientAuth` extended key usage: a server is the client of its routes
  and gateways, which are mutual TLS;
* `client.pem`, `client-key.pem`: a client certificate for the services (`nats.tls_cert`,
  `nats.tls_key`), needed only when the topology sets `tls.verify_clients`.

Keys are ECDSA P-256 (every TLS stack verifies those), private key files mode 0600; existing
server and client files are replaced. `tls_section(out_dir)` is the topology's `[tls]` table
that uses these files (`cert_file` with `{server}`).

Errors: `CertError`, one line naming the file and the problem.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.xregion.natsconf.topology import Topology, server_specs

__all__ = ["CertError", "DevCertificates", "ServerCertificate", "tls_section", "write_dev_certs"]

CA_NAME = "xregion development NATS CA"
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Certificates start a little in the past: a peer whose clock is behind must accept them.
_BACKDATE = datetime.timedelta(minutes=5)


class CertError(Exception):
    """A certificate or key file cannot be read or written; `str()` names it."""


@dataclass(frozen=True)
class ServerCertificate:
    server: str
    cert_file: Path
    key_file: Path
    names: tuple[str, ...]  # the subject alternative names


@dataclass(frozen=True)
class DevCertificates:
    ca_file: Path
    ca_key_file: Path
    ca_created: bool  # False: an existing CA was reused
    servers: tuple[ServerCertificate, ...]
    client_cert_file: Path
    client_key_file: Path


def write_dev_certs(
    topology: Topology, out_dir: Path, *, days: int = 365, client_name: str = "xregion"
) -> DevCertificates:
    """Write the CA, one certificate per server and a client certificate (module docstring)."""
    ca_file, ca_key_file = out_dir / "ca.pem", out_dir / "ca-key.pem"
    _make_dir(out_dir)
    ca_created = not (ca_file.exists() and ca_key_file.exists())
    if ca_created:
        ca_key, ca_cert = _new_ca(days)
        _write_key(ca_key_file, ca_key)
        _write(ca_file, _pem(ca_cert))
    else:
        ca_key, ca_cert = _read_ca(ca_file, ca_key_file)
    servers = tuple(
        _server_cert(out_dir, spec.name, _names(spec.host), ca_key, ca_cert, days)
        for spec in server_specs(topology)
    )
    client_cert, client_key = out_dir / "client.pem", out_dir / "client-key.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    _write_key(client_key, key)
    cert = _leaf(key, client_name, (), ca_key, ca_cert, days, client_only=True)
    _write(client_cert, _pem(cert))
    return DevCertificates(ca_file, ca_key_file, ca_created, servers, client_cert, client_key)


def tls_section(out_dir: Path, *, verify_clients: bool = False) -> str:
    """The topology's `[tls]` table for the files `write_dev_certs` wrote to `out_dir`."""
    base = out_dir.resolve()
    return (
        "[tls]\nenabled = true\n"
        f'cert_file = "{base}/{{server}}.pem"\n'
        f'key_file = "{base}/{{server}}-key.pem"\n'
        f'ca_file = "{base}/ca.pem"\n'
        f"verify_clients = {'true' if verify_clients else 'false'}\n"
    )


def _names(host: str) -> tuple[str, ...]:
    """What a server is dialed at: its host, and every loopback name for a loopback host."""
    names = [host.strip("[]")]
    if _is_loopback(names[0]):
        names += [n for n in _LOOPBACK_NAMES if n not in names]
    return tuple(names)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_cert(
    out_dir: Path,
    server: str,
    names: Sequence[str],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    days: int,
) -> ServerCertificate:
    cert_file, key_file = out_dir / f"{server}.pem", out_dir / f"{server}-key.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    _write_key(key_file, key)
    _write(cert_file, _pem(_leaf(key, server, names, ca_key, ca_cert, days)))
    return ServerCertificate(server, cert_file, key_file, tuple(names))


def _new_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    names: Sequence[str],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    days: int,
    *,
    client_only: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if not client_only:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=not ca, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _read_ca(
    cert_file: Path, key_file: Path
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except OSError as exc:
        raise CertError(f"{exc.filename}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CertError(
            f"{cert_file} / {key_file}: not a PEM certificate and key ({exc})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_file}: not the ECDSA key of a CA made by this command")
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(f"{path}: cannot create: {exc.strerror or exc}") from None


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(path, pem, mode=0o600)


def _write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(fd, mode)  # a file that was there keeps its mode otherwise
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except OSError as exc:
        raise CertError(f"{path}: cannot write: {exc.strerror or exc}") from None
