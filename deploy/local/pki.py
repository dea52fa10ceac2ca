"""Certificates for a local cluster with TLS: a public CA (the frontend's certificate, and
clients' certificates for mutual TLS) and an internal CA (every role's certificate, which each
presents to the others), made at run time with the `cryptography` package. For tests and local
trials; a production cluster uses certificates from its own PKI."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = datetime.timedelta(days=2)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    public_ca: Path
    frontend: Pair
    """The frontend's certificate (localhost, 127.0.0.1), from the public CA."""
    client: Pair
    """A client's certificate from the public CA (mutual TLS on the public port)."""
    internal_ca: Path
    role: Pair
    """Every role's certificate from the internal CA: server and client at once."""
    stranger: Pair
    """A client certificate from a CA nobody trusts."""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    directory: Path,
    *,
    server: bool,
    client: bool,
) -> Pair:
    ca_cert, ca_key = ca
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    usages = [
        *([ExtendedKeyUsageOID.SERVER_AUTH] if server else []),
        *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []),
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName(common_name),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pair(
        cert=_write_cert(cert, directory / f"{common_name}.crt"),
        key=_write_key(key, directory / f"{common_name}.key"),
    )


def make_pki(directory: Path) -> Pki:
    """A fresh set of CAs and certificates under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    public = _ca("tideflow-public-ca")
    internal = _ca("tideflow-internal-ca")
    other = _ca("untrusted-ca")
    return Pki(
        public_ca=_write_cert(public[0], directory / "public-ca.crt"),
        frontend=_leaf(public, "tideflow-frontend", directory, server=True, client=False),
        client=_leaf(public, "tideflow-client", directory, server=False, client=True),
        internal_ca=_write_cert(internal[0], directory / "internal-ca.crt"),
        role=_leaf(internal, "tideflow-role", directory, server=True, client=True),
        stranger=_leaf(other, "stranger", directory, server=False, client=True),
    )
