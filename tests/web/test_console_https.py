"""The console over HTTPS with the node's TLS settings (http_tls): a real TLS server, the session
cookie marked Secure; http_tls without a certificate stops start-up with the keys named."""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from dicom_ai.config import ConfigError, Settings, load_settings
from dicom_ai.store import Stores
from dicom_ai.web.app import start_web
from tests.web.console_support import PASSWORD, add_user, context


def test_the_console_serves_https_with_the_tls_settings(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    settings = Settings(home=tmp_path, http_tls=True, tls_certificate=cert, tls_private_key=key)
    store = Stores.open(tmp_path / "db.sqlite")
    ctx = replace(context(store, tmp_path), https=settings.http_tls)
    add_user(ctx, "vera", "viewer")
    server = start_web("127.0.0.1", 0, ctx, tls=settings.https_context())
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    try:
        secure = http.client.HTTPSConnection("127.0.0.1", server.port, context=client_context, timeout=10)
        secure.request("GET", "/healthz")
        assert secure.getresponse().read() == b"ok\n"
        secure.request("POST", "/login", urllib.parse.urlencode({"username": "vera", "password": PASSWORD}),
                       {"Content-Type": "application/x-www-form-urlencoded"})
        answer = secure.getresponse()
        answer.read()
        assert answer.status == 303 and "Secure" in answer.getheader("set-cookie", "")
        plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            plain.request("GET", "/healthz")
            plain.getresponse().read()
    finally:
        server.stop()
        store.close()


def test_http_tls_without_a_certificate_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="http_tls.*tls_certificate and tls_private_key"):
        load_settings(environ={"DICOM_AI_HOME": str(tmp_path), "DICOM_AI_HTTP_TLS": "true"})
