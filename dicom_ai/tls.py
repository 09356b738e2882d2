"""DICOM over TLS (PS3.15 B.1, BCP 195): the contexts for the SCP and for the associations we open.

Both sides use TLS 1.2 or later and Python's default cipher choice, which meets BCP 195. The SCP
presents `tls_certificate`/`tls_private_key`; with `tls_ca` it also demands a client certificate
signed by that CA (so only the PACS holding one can send). Outgoing associations (results to the
PACS, C-FIND for priors, `dicom-ai echo/send`) verify the peer's certificate against `tls_ca` (or
the system's CAs) and its host name, and present our certificate when one is configured.
"""

from __future__ import annotations

import ssl
from pathlib import Path

ClientTls = tuple[ssl.SSLContext, str]  # what pynetdicom's associate(tls_args=...) takes


class TlsError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file."""


def _load_chain(context: ssl.SSLContext, certificate: Path, private_key: Path) -> None:
    for path in (certificate, private_key):
        if not path.is_file():
            raise TlsError(f"{path}: no such file")
    try:
        context.load_cert_chain(str(certificate), str(private_key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"{certificate} with key {private_key}: cannot be used as a TLS identity ({exc})") from exc


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    if not ca.is_file():
        raise TlsError(f"{ca}: no such file")
    try:
        context.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"{ca}: not a PEM CA certificate ({exc})") from exc


def server_context(certificate: Path, private_key: Path, ca: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, certificate, private_key)
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls(host: str, certificate: Path | None, private_key: Path | None, ca: Path | None) -> ClientTls:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load_ca(context, ca)
    if certificate is not None and private_key is not None:
        _load_chain(context, certificate, private_key)
    return context, host
