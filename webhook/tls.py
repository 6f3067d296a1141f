"""The serving certificate: loaded from files, reloaded when they change, without a restart.

cert-manager (or a kubelet updating a Secret volume) replaces the files; :meth:`TlsReloader.poll`
notices and builds a fresh ``ssl.SSLContext`` from them. The context the server listens with keeps
an SNI callback that hands every new handshake the newest context, so connections already open
(and the requests in flight on them) are untouched. A pair of files that does not load is logged
and counted, and the previous certificate stays in service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from kernel.errors import ConfigError

DEFAULT_POLL_SECONDS = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    serial: int
    not_after: datetime
    subject: str


# (inode, size, mtime) of both files: a kubelet Secret update swaps a symlink, so the inode changes.
_Signature = tuple[tuple[int, int, int], tuple[int, int, int]]


def _signature(cert: Path, key: Path) -> _Signature:
    stats = [os.stat(path) for path in (cert, key)]
    return (
        (stats[0].st_ino, stats[0].st_size, stats[0].st_mtime_ns),
        (stats[1].st_ino, stats[1].st_size, stats[1].st_mtime_ns),
    )


def load_context(cert: Path, key: Path) -> tuple[ssl.SSLContext, CertificateInfo]:
    """A server context for the certificate chain and key in these files.

    Raises ConfigError naming the files when they are missing, unreadable or do not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ssl.SSLError, ValueError) as error:
        raise ConfigError(
            f"TLS certificate {cert} with key {key} cannot be loaded: {error}"
        ) from None
    info = CertificateInfo(
        leaf.serial_number, leaf.not_valid_after_utc, leaf.subject.rfc4514_string()
    )
    return context, info


class TlsReloader:
    """Owns the listening context and swaps in a new certificate when the files change."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        on_reload: Callable[[CertificateInfo], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._cert = cert
        self._key = key
        self._on_reload = on_reload
        self._on_error = on_error
        try:
            self._signature = _signature(cert, key)
        except OSError as error:
            raise ConfigError(f"TLS files cannot be read: {error}") from None
        self.context, self.info = load_context(cert, key)
        self._current = self.context
        self.context.sni_callback = self._choose_context

    def _choose_context(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # Called for every handshake (with or without SNI) before the certificate is chosen.
        if self._current is not self.context:
            connection.context = self._current

    def is_valid(self, now: datetime | None = None) -> bool:
        """Whether the certificate in service has not expired."""
        return (now or datetime.now(UTC)) < self.info.not_after

    def poll(self) -> bool:
        """Reload if the files changed since the last look; True if a new certificate is in
        service. A failed load keeps the old one (and is retried when the files change again)."""
        try:
            signature = _signature(self._cert, self._key)
        except OSError as error:
            self._failed(f"TLS files cannot be read: {error}")
            return False
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            context, info = load_context(self._cert, self._key)
        except ConfigError as error:
            self._failed(str(error))
            return False
        self._current, self.info = context, info
        log.info("TLS certificate reloaded: serial %x, valid until %s", info.serial, info.not_after)
        if self._on_reload:
            self._on_reload(info)
        return True

    def _failed(self, message: str) -> None:
        log.error("%s; still serving the certificate with serial %x", message, self.info.serial)
        if self._on_error:
            self._on_error(message)

    async def watch(self, interval: float = DEFAULT_POLL_SECONDS) -> None:
        """Poll the files forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(interval)
            self.poll()
