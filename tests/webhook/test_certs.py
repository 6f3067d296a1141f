"""certs/make_certs: the files, their modes, the names in the certificate, the printed caBundle."""

from __future__ import annotations

import base64
import ipaddress
import subprocess
import sys
from pathlib import Path

from cryptography import x509

ROOT = Path(__file__).resolve().parents[2]


def make(tmp_path: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "certs.make_certs", "--out", str(tmp_path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def names(cert_path: Path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return alt.get_values_for_type(x509.DNSName), [
        str(ip) for ip in alt.get_values_for_type(x509.IPAddress)
    ]


def test_cli_writes_private_keys_and_prints_only_the_ca_bundle(tmp_path: Path) -> None:
    stdout = make(tmp_path, "--namespace", "sniff", "--san", "10.0.0.7", "--no-loopback")
    assert stdout.strip() == (tmp_path / "ca-bundle.txt").read_text().strip()
    ca_pem = base64.b64decode(stdout)
    assert ca_pem == (tmp_path / "ca.crt").read_bytes()
    for key in ("ca.key", "tls.key"):
        assert (tmp_path / key).stat().st_mode & 0o777 == 0o600
    dns, ips = names(tmp_path / "tls.crt")
    assert dns == [
        "netpol-sniffer-webhook",
        "netpol-sniffer-webhook.sniff",
        "netpol-sniffer-webhook.sniff.svc",
        "netpol-sniffer-webhook.sniff.svc.cluster.local",
    ]
    assert ips == ["10.0.0.7"]
    served = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    served.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))


def test_loopback_by_default_and_reuse_ca_keeps_the_bundle(tmp_path: Path) -> None:
    first = make(tmp_path)
    serial = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes()).serial_number
    dns, ips = names(tmp_path / "tls.crt")
    assert "localhost" in dns
    assert {ipaddress.ip_address(ip) for ip in ips} == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert make(tmp_path, "--reuse-ca") == first
    renewed = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    assert renewed.serial_number != serial
    assert make(tmp_path) != first  # without --reuse-ca: a new CA


def test_overlay_inputs(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    bundle = make(tmp_path / "out", "--overlay", str(overlay)).strip()
    generated = overlay / "generated"
    assert (generated / "ca-bundle.env").read_text() == f"caBundle={bundle}\n"
    assert (generated / "tls.crt").read_bytes() == (tmp_path / "out" / "tls.crt").read_bytes()
    assert (generated / "tls.key").stat().st_mode & 0o777 == 0o600
