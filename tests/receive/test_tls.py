"""DICOM over TLS with real clients: dcmtk's storescu with a certificate is taken, plain DICOM and a
client without a certificate are refused; our own sends go over TLS too; bad TLS settings stop start-up."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import trustme
from pydicom import dcmread

from dicom_ai.config import ConfigError, Peer, Settings, load_settings
from dicom_ai.receive.limits import ConnectionLimits
from dicom_ai.receive.scp import start_scp
from dicom_ai.send.cstore import SendError, echo, send_files
from dicom_ai.store import Spool, Stores
from tests.conftest import copy_as_new_study, free_port, require_binary, sample
from tests.receive.peers import closed_by_peer, connect


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A throwaway CA, the node's certificate (for 127.0.0.1) and a PACS client certificate, as PEM files."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    node = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
    pacs = ca.issue_cert("pacs.example", key_type=trustme.KeyType.RSA)
    files = {"ca": tmp_path / "ca.pem", "node_cert": tmp_path / "node.pem", "node_key": tmp_path / "node.key",
             "pacs_cert": tmp_path / "pacs.pem", "pacs_key": tmp_path / "pacs.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    node.cert_chain_pems[0].write_to_path(str(files["node_cert"]))
    node.private_key_pem.write_to_path(str(files["node_key"]))
    pacs.cert_chain_pems[0].write_to_path(str(files["pacs_cert"]))
    pacs.private_key_pem.write_to_path(str(files["pacs_key"]))
    return files


def test_the_scp_takes_tls_with_a_client_certificate_only(tmp_path: Path, pki: dict[str, Path]) -> None:
    settings = Settings(home=tmp_path, tls_certificate=pki["node_cert"], tls_private_key=pki["node_key"],
                        tls_ca=pki["ca"], tls_receive=True)
    port = free_port()
    store = Stores.open(tmp_path / "db.sqlite")
    server = start_scp("DICOM_AI", "127.0.0.1", port, 0, Spool(tmp_path / "spool"), store.studies, tls=settings.scp_tls())
    storescu = require_binary("storescu")
    try:
        sent = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
        header = dcmread(sent)
        with_certificate = subprocess.run(
            [storescu, "+tls", str(pki["pacs_key"]), str(pki["pacs_cert"]), "+cf", str(pki["ca"]),
             "-aet", "ORTHANC", "-aec", "DICOM_AI", "127.0.0.1", str(port), str(sent)],
            capture_output=True, text=True, timeout=60, check=False)
        assert with_certificate.returncode == 0, with_certificate.stderr
        assert store.reports.receive_counts(header.StudyInstanceUID) == {header.SOPInstanceUID: 1}

        other = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
        plain = subprocess.run([storescu, "-aec", "DICOM_AI", "127.0.0.1", str(port), str(other)],
                               capture_output=True, text=True, timeout=60, check=False)
        anonymous = subprocess.run([storescu, "+tla", "-ic", "-aec", "DICOM_AI", "127.0.0.1", str(port), str(other)],
                                   capture_output=True, text=True, timeout=60, check=False)
        for refused in (plain, anonymous):
            assert refused.returncode != 0 and "Association Request Failed" in refused.stderr
        assert store.reports.receive_counts(dcmread(other).StudyInstanceUID) == {}

        peer = Peer.parse(f"DICOM_AI@127.0.0.1:{port}")
        pacs_side = Settings(home=tmp_path, tls_certificate=pki["pacs_cert"], tls_private_key=pki["pacs_key"],
                             tls_ca=pki["ca"], tls_send=True)
        assert send_files("ORTHANC", peer, [other], pacs_side.client_tls("127.0.0.1")) == {other: None}
        assert echo("ORTHANC", peer, pacs_side.client_tls("127.0.0.1")) == 0
        no_certificate = Settings(home=tmp_path, tls_ca=pki["ca"], tls_send=True)
        with pytest.raises(SendError, match="TLS certificates"):
            echo("ORTHANC", peer, no_certificate.client_tls("127.0.0.1"))
    finally:
        server.shutdown()
        store.close()


def test_without_a_ca_the_scp_takes_tls_without_client_certificates(tmp_path: Path, pki: dict[str, Path]) -> None:
    """The other half of the refusal above: the same anonymous client is taken when no CA is configured."""
    settings = Settings(home=tmp_path, tls_certificate=pki["node_cert"], tls_private_key=pki["node_key"],
                        tls_receive=True)
    port = free_port()
    store = Stores.open(tmp_path / "db.sqlite")
    server = start_scp("DICOM_AI", "127.0.0.1", port, 0, Spool(tmp_path / "spool"), store.studies, tls=settings.scp_tls())
    try:
        sent = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
        anonymous = subprocess.run([require_binary("storescu"), "+tla", "-ic", "-aec", "DICOM_AI", "127.0.0.1",
                                    str(port), str(sent)], capture_output=True, text=True, timeout=60, check=False)
        assert anonymous.returncode == 0, anonymous.stderr
        assert len(store.reports.receive_counts(dcmread(sent).StudyInstanceUID)) == 1
    finally:
        server.shutdown()
        store.close()


def test_bad_tls_settings_name_the_key_and_file(tmp_path: Path, pki: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="config key 'tls_receive'.*needs tls_certificate and tls_private_key"):
        load_settings(environ={"DICOM_AI_TLS_RECEIVE": "true"})
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ConfigError, match=f"config key 'tls_receive'.*{missing}: no such file"):
        load_settings(environ={"DICOM_AI_TLS_RECEIVE": "true", "DICOM_AI_TLS_CERTIFICATE": str(missing),
                               "DICOM_AI_TLS_PRIVATE_KEY": str(pki["node_key"])})
    with pytest.raises(ConfigError, match="cannot be used as a TLS identity"):
        load_settings(environ={"DICOM_AI_TLS_RECEIVE": "true", "DICOM_AI_TLS_CERTIFICATE": str(pki["node_cert"]),
                               "DICOM_AI_TLS_PRIVATE_KEY": str(pki["pacs_key"])})  # key of another certificate
    with pytest.raises(ConfigError, match="config key 'tls_send'.*not a PEM CA certificate"):
        load_settings(environ={"DICOM_AI_TLS_SEND": "true", "DICOM_AI_TLS_CA": str(pki["node_key"])})


def test_a_silent_peer_on_the_tls_port_holds_up_nobody(tmp_path: Path, pki: dict[str, Path]) -> None:
    """The handshake runs in the connection's thread within negotiation_timeout: pynetdicom alone does it in
    the accept loop, where one peer that never says hello stops every other connection."""
    settings = Settings(home=tmp_path, tls_certificate=pki["node_cert"], tls_private_key=pki["node_key"],
                        tls_receive=True)
    port = free_port()
    store = Stores.open(tmp_path / "db.sqlite")
    server = start_scp("DICOM_AI", "127.0.0.1", port, 0, Spool(tmp_path / "spool"), store.studies, tls=settings.scp_tls(),
                       limits=ConnectionLimits(negotiation_timeout=2))
    silent, opened = connect(port, source="127.0.0.2"), time.monotonic()
    try:
        sent = copy_as_new_study(sample("CT_small.dcm"), tmp_path / "in")
        tls_sender = subprocess.run([require_binary("storescu"), "-to", "10", "-ta", "10", "+tla", "-ic", "-aec",
                                     "DICOM_AI", "127.0.0.1", str(port), str(sent)],
                                    capture_output=True, text=True, timeout=60, check=False)
        assert tls_sender.returncode == 0, tls_sender.stderr
        assert closed_by_peer(silent, within=10, since=opened) is not None
    finally:
        silent.close()
        server.shutdown()
        store.close()
