"""Make a CA and a serving certificate for the webhook; print the caBundle.

For local runs, docker-compose, the self-signed overlay and test harnesses (production clusters
should use the cert-manager overlay). Run from the repository root:

    python -m certs.make_certs                      # → certs/out/{ca,tls}.{crt,key}, ca-bundle.txt
    python -m certs.make_certs --overlay manifests/overlays/self-signed
    python -m certs.make_certs --reuse-ca           # new serving cert, same CA (same caBundle)

The serving certificate names the Service (``SERVICE``, ``SERVICE.NAMESPACE``,
``SERVICE.NAMESPACE.svc``, ``SERVICE.NAMESPACE.svc.cluster.local``) and, unless ``--no-loopback``,
``localhost``, ``127.0.0.1`` and ``::1``; ``--san`` adds more (DNS names or IP addresses).
Keys are ECDSA P-256 and written with mode 0600. stdout carries only the caBundle (base64 of the
CA's PEM), so ``CA_BUNDLE=$(python -m certs.make_certs)`` works.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
DEFAULT_SERVICE = "netpol-sniffer-webhook"
DEFAULT_NAMESPACE = "netpol-sniffer"
DEFAULT_DAYS = 365
DEFAULT_CA_DAYS = 3650
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# What the self-signed overlay's kustomization reads (inside the overlay: kustomize only loads
# files under its own directory).
OVERLAY_DIRECTORY = "generated"

CertKey = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names a client inside the cluster may use for the Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netpol-sniffer"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures only; a CA signs certificates and CRLs as well."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(*, days: int, now: datetime) -> CertKey:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("netpol-sniffer webhook CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_serving_cert(ca: CertKey, *, names: Sequence[str], days: int, now: datetime) -> CertKey:
    """A server certificate signed by ``ca`` for ``names`` (DNS names or IP addresses)."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write via a temporary file and rename, so a server watching ``path`` never reads half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    temporary.replace(path)


def _load_ca(out: Path) -> CertKey:
    cert = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{out / 'ca.key'} is not an ECDSA key")
    return cert, key


def ca_bundle(ca_cert: x509.Certificate) -> str:
    """What goes into a webhook configuration's ``clientConfig.caBundle``."""
    return base64.b64encode(_cert_pem(ca_cert)).decode("ascii")


def make_certs(
    out: Path,
    *,
    names: Sequence[str],
    days: int = DEFAULT_DAYS,
    reuse_ca: bool = False,
    overlay: Path | None = None,
) -> str:
    """Write ``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key`` and ``ca-bundle.txt`` into ``out``
    (and the self-signed overlay's inputs into ``overlay/generated``); return the caBundle."""
    now = datetime.now(UTC)
    if reuse_ca and (out / "ca.crt").exists() and (out / "ca.key").exists():
        ca = _load_ca(out)
    else:
        ca = make_ca(days=DEFAULT_CA_DAYS, now=now)
        _write(out / "ca.key", _key_pem(ca[1]), secret=True)
        _write(out / "ca.crt", _cert_pem(ca[0]))
    cert, key = make_serving_cert(ca, names=names, days=days, now=now)
    bundle = ca_bundle(ca[0])
    # Key first: a watcher that sees the new certificate finds its key already in place.
    _write(out / "tls.key", _key_pem(key), secret=True)
    _write(out / "tls.crt", _cert_pem(cert))
    _write(out / "ca-bundle.txt", f"{bundle}\n".encode())
    if overlay is not None:
        generated = overlay / OVERLAY_DIRECTORY
        _write(generated / "tls.key", _key_pem(key), secret=True)
        _write(generated / "tls.crt", _cert_pem(cert))
        _write(generated / "ca-bundle.env", f"caBundle={bundle}\n".encode())
    return bundle


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m certs.make_certs",
        description="Make a CA and a serving certificate for the webhook; print the caBundle.",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help="directory (%(default)s)"
    )
    parser.add_argument("--service", default=DEFAULT_SERVICE, help="Service name (%(default)s)")
    parser.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help="its namespace (%(default)s)"
    )
    parser.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address (repeatable)",
    )
    parser.add_argument(
        "--no-loopback", action="store_true", help="leave out localhost, 127.0.0.1 and ::1"
    )
    parser.add_argument(
        "--days", type=int, default=DEFAULT_DAYS, metavar="N", help="validity in days (%(default)s)"
    )
    parser.add_argument(
        "--reuse-ca", action="store_true", help="keep the CA already in --out (same caBundle)"
    )
    parser.add_argument(
        "--overlay",
        type=Path,
        metavar="DIR",
        help="also write the self-signed overlay's generated/ inputs into this directory",
    )
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    names = service_names(args.service, args.namespace)
    names += [] if args.no_loopback else list(LOOPBACK_NAMES)
    names += [name for name in args.san if name not in names]
    try:
        bundle = make_certs(
            args.out, names=names, days=args.days, reuse_ca=args.reuse_ca, overlay=args.overlay
        )
    except (OSError, ValueError) as error:
        print(f"make_certs: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/{{ca.crt,ca.key,tls.crt,tls.key,ca-bundle.txt}}", file=sys.stderr)
    if args.overlay is not None:
        print(
            f"wrote {args.overlay / OVERLAY_DIRECTORY}/{{tls.crt,tls.key,ca-bundle.env}}",
            file=sys.stderr,
        )
    print(f"serving certificate for: {', '.join(names)}", file=sys.stderr)
    print(bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
