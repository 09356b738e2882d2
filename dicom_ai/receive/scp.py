"""The C-STORE SCP: an instance is acknowledged with Success only once it is on disk and in the database.

pynetdicom streams each incoming dataset to a temporary file (STORE_RECV_CHUNKED_DATASET), so
memory stays flat whatever the instance size; the file already holds the File Meta Information
and the raw received bytes, which we keep as they are (no decode/re-encode: lossless and fast).
"""

from __future__ import annotations

import logging
import socket
import ssl
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import Dataset, dcmread
from pydicom.tag import Tag
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_ai.receive import status
from dicom_ai.store.database import ReceivedInstance
from dicom_ai.store.spool import SpoolError, is_safe_uid

if TYPE_CHECKING:
    from pynetdicom.events import Event
    from pynetdicom.transport import ThreadedAssociationServer

    from dicom_ai.store import Spool, Store

log = logging.getLogger(__name__)

_HEADER_TAGS = [
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
]


class StoreRejected(Exception):
    """An instance we refuse, with the DIMSE status to answer and a message naming the problem."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def _text(header: Dataset, keyword: str) -> str:
    """A header value as text; a value pydicom cannot decode makes a dataset we cannot understand."""
    try:
        return str(header.get(keyword, "") or "")
    except Exception as exc:  # noqa: BLE001: decoded lazily, so a bad VR or length only shows here (fuzzing)
        tag = Tag(keyword)
        raise StoreRejected(status.CANNOT_UNDERSTAND, f"({tag.group:04X},{tag.element:04X}) {keyword} cannot be "
                                                      f"decoded: {type(exc).__name__}: {exc}") from exc


def read_identity(path: Path, expected_sop_uid: str, calling_aet: str, transfer_syntax: str) -> ReceivedInstance:
    """The identifying attributes of a received file, validated enough to file it safely."""
    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception as exc:  # noqa: BLE001: a peer's bytes can break the parser in any way (zlib.error,
        # struct.error, ... found by fuzzing, tests/fuzz): each is a dataset we cannot understand
        raise StoreRejected(status.CANNOT_UNDERSTAND, f"dataset cannot be parsed: {type(exc).__name__}: {exc}") from exc
    uids = {}
    for tag, keyword in (("0020,000D", "StudyInstanceUID"), ("0020,000E", "SeriesInstanceUID"),
                         ("0008,0018", "SOPInstanceUID")):
        value = _text(header, keyword).strip().rstrip("\x00")
        if not value:
            raise StoreRejected(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"({tag}) {keyword} is missing")
        if not is_safe_uid(value):
            raise StoreRejected(
                status.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"({tag}) {keyword} {value!r} is not a valid UID"
            )
        uids[keyword] = value
    if uids["SOPInstanceUID"] != expected_sop_uid:
        raise StoreRejected(
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"(0008,0018) SOPInstanceUID {uids['SOPInstanceUID']} differs from the request's "
            f"Affected SOP Instance UID {expected_sop_uid}",
        )
    return ReceivedInstance(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=_text(header, "SOPClassUID"),
        series_instance_uid=uids["SeriesInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        modality=_text(header, "Modality"),
        transfer_syntax_uid=transfer_syntax,
        path=path,
        size=0,
        calling_aet=calling_aet,
        patient_id=_text(header, "PatientID"),
        patient_name=_text(header, "PatientName"),
        accession_number=_text(header, "AccessionNumber"),
        study_date=_text(header, "StudyDate"),
        study_description=_text(header, "StudyDescription"),
    )


def handle_store(event: Event, spool: Spool, store: Store) -> int:
    """EVT_C_STORE: make the instance durable, record it, then (and only then) answer Success."""
    calling_aet = event.assoc.requestor.ae_title.strip()
    sop_uid = str(event.request.AffectedSOPInstanceUID)
    temporary = Path(event.dataset_path)
    try:
        identity = read_identity(temporary, sop_uid, calling_aet, str(event.context.transfer_syntax))
        final = spool.instance_path(
            identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid
        )
        with spool.study_lock(identity.study_instance_uid):  # a purge of this study waits, see store/retention.py
            size = spool.adopt(temporary, final)
            is_new = store.record_instance(
                ReceivedInstance(**{**identity.__dict__, "path": final, "size": size})
            )
    except StoreRejected as exc:
        log.error("refused instance %s from %s: %s (status 0x%04X)", sop_uid, calling_aet, exc, exc.status_code)
        return exc.status_code
    except (SpoolError, sqlite3.Error, OSError) as exc:
        log.error("cannot keep instance %s from %s: %s (status 0x%04X)", sop_uid, calling_aet, exc,
                  status.OUT_OF_RESOURCES)
        return status.OUT_OF_RESOURCES
    log.debug("stored %s %s (%d bytes)%s", identity.modality, sop_uid, size, "" if is_new else " again")
    return status.SUCCESS


def handle_connection_open(event: Event) -> None:
    """Disable Nagle: DIMSE is request/response with small PDUs, Nagle makes it crawl."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    except (AttributeError, OSError) as exc:  # not fatal: only slower
        log.debug("could not set TCP_NODELAY: %s", exc)


def build_ae(ae_title: str, max_pdu: int, allowed_calling: Sequence[str] = ()) -> AE:
    """An AE that accepts every storage SOP class (also private ones) in every transfer syntax, and C-ECHO.

    With `allowed_calling`, associations from any other calling AE title are rejected (A-ASSOCIATE-RJ,
    "calling AE title not recognised") before a byte of data is taken.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.network_timeout = 60
    ae.dimse_timeout = 60
    ae.acse_timeout = 30
    ae.maximum_associations = 16
    ae.require_calling_aet = list(allowed_calling)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae


def handle_rejected(event: Event, allowed_calling: Sequence[str]) -> None:
    requestor = event.assoc.requestor
    calling = requestor.ae_title.strip()
    if allowed_calling and calling not in allowed_calling:
        why = "its calling AE title is not in allowed_calling_aets"
    else:
        why = f"too many associations at once (at most {event.assoc.ae.maximum_associations}) or a request we do not support"
    log.warning("refused an association from %s (%s:%s): %s", calling, requestor.address, requestor.port, why)


def start_scp(ae_title: str, host: str, port: int, max_pdu: int, spool: Spool, store: Store,
              allowed_calling: Sequence[str] = (), tls: ssl.SSLContext | None = None) -> ThreadedAssociationServer:
    """Start listening in background threads; returns the server (call .shutdown() to stop)."""
    # pynetdicom writes each incoming dataset with NamedTemporaryFile in the default temp dir:
    # point it at the spool so adopting the file is a rename on the same filesystem.
    tempfile.tempdir = str(spool.incoming)
    ae = build_ae(ae_title, max_pdu, allowed_calling)
    handlers = [
        (evt.EVT_C_STORE, handle_store, [spool, store]),
        (evt.EVT_CONN_OPEN, handle_connection_open),
        (evt.EVT_REJECTED, handle_rejected, [list(allowed_calling)]),
    ]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=tls)
    assert server is not None
    log.info("DICOM SCP %s listening on %s:%d%s", ae_title, host, port, " (TLS only)" if tls else "")
    return server
