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
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pydicom import Dataset, dcmread
from pydicom.tag import Tag
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_ai.crashpoints import crash_point
from dicom_ai.receive import status
from dicom_ai.receive.incoming import IncomingFiles, attach
from dicom_ai.receive.limits import Admission, ConnectionLimits, resolve_hosts
from dicom_ai.receive.server import GuardedServer, serve
from dicom_ai.dicom_values import is_safe_uid
from dicom_ai.domain import ReceivedInstance

if TYPE_CHECKING:
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

    from dicom_ai.store import Spool, StudyStore

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


def handle_store(event: Event, spool: Spool, store: StudyStore, incoming: IncomingFiles) -> int:
    """EVT_C_STORE: make the instance durable, record it, then (and only then) answer Success."""
    calling_aet = event.assoc.requestor.ae_title.strip()
    sop_uid = str(cast("C_STORE", event.request).AffectedSOPInstanceUID)
    temporary = Path(event.dataset_path)
    try:
        write_error = incoming.error_for(temporary)
        if write_error is not None:
            raise OSError(write_error.errno, f"cannot write it to {spool.incoming}: {write_error.strerror or write_error}")
        identity = read_identity(temporary, sop_uid, calling_aet, str(event.context.transfer_syntax))
        return keep_instance(identity, temporary, spool, store)
    except StoreRejected as exc:
        log.error("refused instance %s from %s: %s (status 0x%04X)", sop_uid, calling_aet, exc, exc.status_code)
        return exc.status_code
    except (sqlite3.Error, OSError) as exc:  # disk full, database locked past its timeout...
        log.error("cannot keep instance %s from %s: %s (answered 0x%04X Out of Resources; the sender should retry)",
                  sop_uid, calling_aet, getattr(exc, "strerror", None) or exc, status.OUT_OF_RESOURCES)
        return status.OUT_OF_RESOURCES
    finally:
        incoming.release(temporary)
        spool.discard(temporary)  # refused or failed: nothing of it stays in incoming/


def keep_instance(identity: ReceivedInstance, temporary: Path, spool: Spool, store: StudyStore) -> int:
    """File a received instance under the spool and record it; the acknowledged copy is never at risk.

    The new copy goes under a name no other file has; the database then switches to it in one
    commit; only after that commit is an older copy of the same SOP Instance UID deleted. A failed
    commit (database locked past its busy timeout, disk full) removes the new copy and leaves the
    older one, still recorded, exactly as it was.
    """
    held = store.stored_copy(identity.sop_instance_uid)
    studies = {identity.study_instance_uid} | ({held.study_instance_uid} if held else set())
    with spool.study_locks(studies):  # a purge of these studies waits, see store/retention.py
        if held is not None and held.study_instance_uid == identity.study_instance_uid \
                and spool.same_content(temporary, held.path):
            store.record_repeat(identity)
            log.debug("instance %s from %s received again (same bytes)", identity.sop_instance_uid,
                      identity.calling_aet)
            return status.SUCCESS
        final = spool.free_instance_path(
            identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid)
        size = spool.adopt(temporary, final)
        crash_point("receive.after_rename")
        try:
            recorded = store.record_instance(replace(identity, path=final, size=size))
        except BaseException:
            spool.discard(final)
            raise
        crash_point("receive.after_commit")
        if recorded.replaced is not None:
            try:  # committed: whatever fails now is only cleanup, redone from the trash at the next start
                spool.remove_files([recorded.replaced])
                store.empty_trash([recorded.replaced])
            except (sqlite3.Error, OSError) as exc:
                log.warning("could not delete the replaced copy %s yet (%s); it goes at the next start",
                            recorded.replaced, exc)
            if recorded.moved_from:
                log.warning("instance %s from %s moved from study %s to study %s: both are processed again",
                            identity.sop_instance_uid, identity.calling_aet, recorded.moved_from,
                            identity.study_instance_uid)
            else:
                log.warning("instance %s from %s replaces the copy we held (other content): study %s is "
                            "processed again and its new results supersede the earlier ones",
                            identity.sop_instance_uid, identity.calling_aet, identity.study_instance_uid)
    log.debug("stored %s %s (%d bytes)", identity.modality, identity.sop_instance_uid, size)
    return status.SUCCESS


def handle_connection_closed(event: Event, incoming: IncomingFiles) -> None:
    """A transfer cut off mid-dataset never reaches the handler: remove its partial file now."""
    left = incoming.discard_unfinished(event.assoc)
    if left:
        log.warning("removed %d partial upload(s) from %s (%s:%s): the connection ended mid-transfer", left,
                    event.assoc.requestor.ae_title.strip() or "?", event.assoc.requestor.address,
                    event.assoc.requestor.port)


def handle_connection_open(event: Event) -> None:
    """Disable Nagle: DIMSE is request/response with small PDUs, Nagle makes it crawl."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    except (AttributeError, OSError) as exc:  # not fatal: only slower
        log.debug("could not set TCP_NODELAY: %s", exc)


def build_ae(ae_title: str, max_pdu: int, allowed_calling: Sequence[str] = (),
             limits: ConnectionLimits | None = None) -> AE:
    """An AE that accepts every storage SOP class (also private ones) in every transfer syntax, and C-ECHO.

    With `allowed_calling`, associations from any other calling AE title are rejected (A-ASSOCIATE-RJ,
    "calling AE title not recognised") before a byte of data is taken. The timeouts and the number of
    associations come from `limits` (receive/limits.py, receive/pdu_guard.py say how they are enforced).
    """
    limits = limits or ConnectionLimits()
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.network_timeout = limits.idle_timeout  # no complete PDU for this long: abort
    ae.dimse_timeout = 60
    ae.acse_timeout = limits.negotiation_timeout  # waiting for the A-ASSOCIATE-RQ, and for the peer to close
    # Admission (receive/server.py) never lets more connections in, so pynetdicom's own count is a backstop.
    ae.maximum_associations = limits.max_associations
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


def start_scp(ae_title: str, host: str, port: int, max_pdu: int, spool: Spool, store: StudyStore,
              allowed_calling: Sequence[str] = (), tls: ssl.SSLContext | None = None, *,
              limits: ConnectionLimits | None = None, trusted_aets: Sequence[str] = (),
              known_hosts: Sequence[str] = ()) -> GuardedServer:
    """Start listening in background threads; returns the server (call .shutdown() to stop).

    Calling AE titles in `allowed_calling` and `trusted_aets` teach the admission their addresses, and
    `known_hosts` (the PACS) are known from the start: those get the reserved slots (receive/limits.py).
    """
    limits = limits or ConnectionLimits()
    ae = build_ae(ae_title, max_pdu, allowed_calling, limits)
    # Incoming datasets stream into the spool's incoming/ folder (adopting one is then a rename on
    # the same filesystem); see receive/incoming.py for full disks and transfers cut off mid-way.
    incoming = IncomingFiles(spool.incoming)
    attach(ae, incoming)
    handlers = [
        (evt.EVT_C_STORE, handle_store, [spool, store, incoming]),
        (evt.EVT_CONN_CLOSE, handle_connection_closed, [incoming]),
        (evt.EVT_CONN_OPEN, handle_connection_open),
        (evt.EVT_REJECTED, handle_rejected, [list(allowed_calling)]),
    ]
    admission = Admission(limits, [*allowed_calling, *trusted_aets], resolve_hosts(known_hosts))
    server = serve(ae, (host, port), handlers, tls, admission, max_pdu)
    log.info("DICOM SCP %s listening on %s:%d%s", ae_title, host, port, " (TLS only)" if tls else "")
    return server
