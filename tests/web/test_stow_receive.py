"""STOW-RS into the node over real loopback HTTP, dicomweb-client as the sender (as a VNA or cloud archive
pushes): instances kept like the SCP keeps them, each refusal named, the PS3.18 answer and HTTP codes,
the commit before the answer, and flat memory however large the upload."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_ai.store import Spool, Stores
from dicom_ai.web.app import start_web
from dicom_ai.web.server import WebServer
from dicom_ai.web.stow import StowReceive
from tests.conftest import copy_as_new_study, free_port, sample, wait_for
from tests.scp_child import ScpChild
from tests.web.console_support import context

A900, C000, C122 = 0xA900, 0xC000, 0xC122


@dataclass
class Node:
    store: Stores
    spool: Spool
    server: WebServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/dicom-web"

    def client(self, **session: object) -> DICOMwebClient:
        http = requests.Session()
        for key, value in session.items():
            setattr(http, key, value)
        made = DICOMwebClient(self.url, session=http)
        made.set_http_retry_params(retry=False)
        return made

    def held(self) -> set[str]:
        return {row["sop_instance_uid"] for row in self.store.database.query("select sop_instance_uid from instances")}


def _node(tmp_path: Path, max_bytes: int = 10**9, user: str | None = None, password: str | None = None) -> Node:
    store, spool = Stores.open(tmp_path / "db.sqlite"), Spool(tmp_path / "spool")
    server = start_web("127.0.0.1", 0, context(store),
                       stow_receive=StowReceive(spool, store.studies, max_bytes, user, password))
    return Node(store, spool, server)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    running = _node(tmp_path)
    yield running
    running.server.stop()
    running.store.close()


def _instances(tmp_path: Path, n: int, study: str | None = None, name: str = "CT_small.dcm") -> list[Dataset]:
    study = study or generate_uid()
    return [dcmread(copy_as_new_study(sample(name), tmp_path / "in", StudyInstanceUID=study)) for _ in range(n)]


def _failed(answer: Dataset) -> dict[str, int]:
    return {str(item.get("ReferencedSOPInstanceUID", "")): int(item.FailureReason)
            for item in answer.get("FailedSOPSequence", [])}


def _referenced(answer: Dataset) -> list[str]:
    return [str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])]


def test_good_instances_are_stored_byte_for_byte_and_acknowledged(node: Node, tmp_path: Path) -> None:
    sent = _instances(tmp_path, 3)
    answer = node.client().store_instances(sent)
    uids = [str(ds.SOPInstanceUID) for ds in sent]
    assert _referenced(answer) == uids and _failed(answer) == {}
    assert node.held() == set(uids)
    for instance in node.store.studies.instances_of(str(sent[0].StudyInstanceUID)):
        assert instance.path.is_relative_to(node.spool.studies)
        assert dcmread(instance.path).PixelData == sent[0].PixelData
    assert list(node.spool.incoming.iterdir()) == []
    # Sent again (the sender did not hear the answer): the same instances, stored once.
    assert _referenced(node.client().store_instances(sent)) == uids
    assert node.store.reports.receive_counts(str(sent[0].StudyInstanceUID)) == {uid: 2 for uid in uids}


def test_a_broken_part_is_refused_with_its_reason_and_the_others_stored(node: Node, tmp_path: Path) -> None:
    sent = _instances(tmp_path, 3)
    del sent[1].SeriesInstanceUID  # a dataset we cannot file
    response = requests.post(f"{node.url}/studies", data=_multipart([_part10(ds) for ds in sent] + [b"not DICOM"]),
                             headers={"Content-Type": _CONTENT_TYPE}, timeout=30)
    assert response.status_code == 202 and response.headers["Content-Type"] == "application/dicom+json"
    answer = Dataset.from_json(response.json())
    assert _referenced(answer) == [str(sent[0].SOPInstanceUID), str(sent[2].SOPInstanceUID)]
    assert _failed(answer) == {str(sent[1].SOPInstanceUID): A900, "": C000}
    [refused] = [item for item in answer.FailedSOPSequence if item.FailureReason == A900]
    assert refused.ReferencedSOPClassUID == sent[1].SOPClassUID
    assert node.held() == {str(sent[0].SOPInstanceUID), str(sent[2].SOPInstanceUID)}

    # The same through dicomweb-client: 202 is no error to it, the answer says what failed.
    again = _instances(tmp_path, 2)
    del again[0].StudyInstanceUID
    assert _failed(node.client().store_instances(again)) == {str(again[0].SOPInstanceUID): A900}
    assert list(node.spool.incoming.iterdir()) == []


def test_none_stored_is_409_and_another_study_than_the_url_is_refused(node: Node, tmp_path: Path) -> None:
    study = generate_uid()
    elsewhere = _instances(tmp_path, 2)
    with pytest.raises(requests.HTTPError) as refused:
        node.client().store_instances(elsewhere, study_instance_uid=study)
    assert refused.value.response.status_code == 409
    answer = Dataset.from_json(refused.value.response.json())
    assert _failed(answer) == {str(ds.SOPInstanceUID): A900 for ds in elsewhere}
    mine = _instances(tmp_path, 1, study=study)
    assert _referenced(node.client().store_instances(mine, study_instance_uid=study)) == [str(mine[0].SOPInstanceUID)]
    assert node.held() == {str(mine[0].SOPInstanceUID)}


def test_a_part_that_is_not_application_dicom_is_refused(node: Node, tmp_path: Path) -> None:
    [good] = _instances(tmp_path, 1)
    body = _multipart([_part10(good), b'{"00100010": {"vr": "PN"}}'], types=["application/dicom", "application/json"])
    response = requests.post(f"{node.url}/studies", data=body, headers={"Content-Type": _CONTENT_TYPE}, timeout=30)
    assert response.status_code == 202 and _failed(Dataset.from_json(response.json())) == {"": C122}


@pytest.mark.parametrize("content_type", [
    "application/dicom",
    'multipart/related; type="application/dicom+json"; boundary=XX',
    'multipart/related; type="application/dicom"',  # no boundary
])
def test_a_wrong_content_type_is_415(node: Node, content_type: str) -> None:
    response = requests.post(f"{node.url}/studies", data=b"--XX--\r\n", headers={"Content-Type": content_type},
                             timeout=30)
    assert response.status_code == 415 and "\n" not in response.text.strip()


def test_a_body_over_the_maximum_is_413_and_what_came_before_stays_stored(tmp_path: Path) -> None:
    running = _node(tmp_path, max_bytes=2_000_000)
    try:
        small = _instances(tmp_path, 1)
        body = _multipart([_part10(ds) for ds in small])
        declared = requests.post(f"{running.url}/studies", data=body + b"\0" * 2_000_000,
                                 headers={"Content-Type": _CONTENT_TYPE}, timeout=30)
        assert declared.status_code == 413 and running.held() == set()  # refused before a byte was read

        # dicomweb-client sends a body over 1 MB in chunks, without a length: refused when it passes the limit.
        large = _instances(tmp_path, 1) + _instances(tmp_path, 2, name="RG1_UNCR.dcm")  # 0.5 MB + 2 x 7 MB
        with pytest.raises(requests.HTTPError) as too_large:
            running.client().store_instances(large)
        assert too_large.value.response.status_code == 413
        assert _referenced(Dataset.from_json(too_large.value.response.json())) == [str(large[0].SOPInstanceUID)]
        assert running.held() == {str(large[0].SOPInstanceUID)}
        assert list(running.spool.incoming.iterdir()) == []
    finally:
        running.server.stop()
        running.store.close()


def test_senders_must_give_the_configured_credentials(tmp_path: Path) -> None:
    running = _node(tmp_path, user="vna", password="s3cret")
    try:
        sent = _instances(tmp_path, 1)
        for auth in (None, ("vna", "wrong"), ("other", "s3cret")):
            with pytest.raises(requests.HTTPError) as refused:
                running.client(auth=auth).store_instances(sent)
            assert refused.value.response.status_code == 401
            assert refused.value.response.headers["WWW-Authenticate"].startswith("Basic ")
        assert running.held() == set()
        assert _referenced(running.client(auth=("vna", "s3cret")).store_instances(sent)) == [str(sent[0].SOPInstanceUID)]
    finally:
        running.server.stop()
        running.store.close()


def test_an_upload_cut_off_mid_part_keeps_the_whole_parts_and_leaves_no_partial_file(node: Node, tmp_path: Path) -> None:
    sent = _instances(tmp_path, 2)
    body = _multipart([_part10(ds) for ds in sent])
    cut = body[: len(body) - len(_part10(sent[1])) // 2]  # half of the second instance, then the sender is gone
    with socket.create_connection(("127.0.0.1", node.server.port), timeout=10) as sock:
        sock.sendall(f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {_CONTENT_TYPE}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + cut)
        wait_for("the first instance", lambda: node.held() == {str(sent[0].SOPInstanceUID)}, timeout=10)
    wait_for("the partial file removed", lambda: list(node.spool.incoming.iterdir()) == [], timeout=10)
    assert node.held() == {str(sent[0].SOPInstanceUID)}


def test_an_acknowledged_instance_survives_kill_9_right_after_the_answer(tmp_path: Path) -> None:
    http_port = free_port()
    child = ScpChild(tmp_path / "node", free_port(), "--http-port", str(http_port), "--stow-max-mb", "100")
    sent = _instances(tmp_path, 2)
    try:
        client = DICOMwebClient(f"http://127.0.0.1:{http_port}/dicom-web")
        answer = client.store_instances(sent)
    finally:
        child.stop()  # SIGKILL: no chance to write anything after the answer
    assert len(_referenced(answer)) == 2
    store = Stores.open(tmp_path / "node" / "db.sqlite")  # what a restarted node finds
    try:
        instances = store.studies.instances_of(str(sent[0].StudyInstanceUID))
        assert {i.sop_instance_uid for i in instances} == set(_referenced(answer))
        assert all(dcmread(i.path).SOPInstanceUID == i.sop_instance_uid for i in instances)
    finally:
        store.close()


def test_memory_stays_flat_for_a_large_upload(tmp_path: Path) -> None:
    http_port = free_port()
    child = ScpChild(tmp_path / "node", free_port(), "--http-port", str(http_port), "--stow-max-mb", "1000")
    try:
        client = DICOMwebClient(f"http://127.0.0.1:{http_port}/dicom-web")
        client.store_instances(_instances(tmp_path, 1))  # warm up: every module loaded, every buffer made
        before = child.memory_mb()
        study = generate_uid()
        large = [_large_instance(study) for _ in range(24)]  # 24 x 8 MB = 192 MB in one request
        answer = client.store_instances(large)
        growth = child.memory_mb() - before
        print(f"STOW-RS of {len(large)} x 8 MB: peak RSS {before:.0f} -> {child.memory_mb():.0f} MB (+{growth:.0f})")
        assert len(_referenced(answer)) == len(large)
        assert growth < 40, f"peak RSS grew by {growth:.0f} MB for a 192 MB upload: is the upload held in memory?"
    finally:
        child.stop()


def _large_instance(study: str) -> Dataset:
    """A DX-like 2048 x 2048 16-bit image (8 MB) with fresh UIDs."""
    ds = Dataset()
    ds.preamble = b"\0" * 128  # a DICOM Part 10 file, as STOW-RS carries (dicomweb-client writes what it is given)
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality, ds.PatientID = "DX", "STOW-MEMORY"
    ds.Rows = ds.Columns = 2048
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = os.urandom(2048 * 2048 * 2)
    return ds


_BOUNDARY = "dicom-ai-test-boundary"
_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}'


def _part10(ds: Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _multipart(parts: list[bytes], types: list[str] | None = None) -> bytes:
    body = b""
    for number, part in enumerate(parts):
        kind = (types or [])[number] if types and number < len(types) else "application/dicom"
        body += f"--{_BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode() + part + b"\r\n"
    return body + f"--{_BOUNDARY}--\r\n".encode()
