"""Keeping a received instance: the one way every receiver (the C-STORE SCP, the STOW-RS endpoint)
turns a fully received file into a durable, recorded instance, or refuses it with a named status.

A receiver streams the bytes into a temporary file in the spool's incoming/ folder, then calls
`keep_file`: the identity is read and checked, the file fsynced and renamed under the study, the
row committed; only then may the receiver answer Success (or its STOW-RS equivalent).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import Dataset, dcmread
from pydicom.tag import Tag

from dicom_ai.crashpoints import crash_point
from dicom_ai.dicom_values import is_safe_uid
from dicom_ai.domain import ReceivedInstance
from dicom_ai.receive import status

if TYPE_CHECKING:
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
        self.sop_instance_uid = ""  # what the file says, when it could be read (STOW-RS names refusals by it)
        self.sop_class_uid = ""


@dataclass(frozen=True)
class Kept:
    """How keeping one received file went: the status to answer, and what was kept or why not."""

    status: int  # a receive/status.py constant: SUCCESS once the file is durable and recorded
    sop_instance_uid: str  # as far as it is known (the request's, the file's, or "")
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    error: str | None = None  # one line: why it was refused or could not be kept

    @property
    def ok(self) -> bool:
        return self.status == status.SUCCESS


def _text(header: Dataset, keyword: str) -> str:
    """A header value as text; a value pydicom cannot decode makes a dataset we cannot understand."""
    try:
        return str(header.get(keyword, "") or "")
    except Exception as exc:  # noqa: BLE001: decoded lazily, so a bad VR or length only shows here (fuzzing)
        tag = Tag(keyword)
        raise StoreRejected(status.CANNOT_UNDERSTAND, f"({tag.group:04X},{tag.element:04X}) {keyword} cannot be "
                                                      f"decoded: {type(exc).__name__}: {exc}") from exc


def read_identity(path: Path, expected_sop_uid: str | None, calling_aet: str, transfer_syntax: str | None,
                  expected_study_uid: str | None = None) -> ReceivedInstance:
    """The identifying attributes of a received file, validated enough to file it safely.

    `expected_sop_uid`: the C-STORE request's Affected SOP Instance UID (None: no request names one,
    as in STOW-RS); `transfer_syntax`: the negotiated one (None: the file's own File Meta Information);
    `expected_study_uid`: the study a STOW-RS request was addressed to, if any.
    """
    try:
        header = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception as exc:  # noqa: BLE001: a peer's bytes can break the parser in any way (zlib.error,
        # struct.error, ... found by fuzzing, tests/fuzz): each is a dataset we cannot understand
        raise StoreRejected(status.CANNOT_UNDERSTAND, f"dataset cannot be parsed: {type(exc).__name__}: {exc}") from exc
    try:
        return _identity(header, path, expected_sop_uid, calling_aet, transfer_syntax, expected_study_uid)
    except StoreRejected as exc:
        for keyword in ("SOPInstanceUID", "SOPClassUID"):
            try:
                value = str(header.get(keyword, "") or "").strip().rstrip("\x00")
            except Exception:  # noqa: BLE001: undecodable: the refusal already says why
                value = ""
            if is_safe_uid(value):
                setattr(exc, "sop_instance_uid" if keyword == "SOPInstanceUID" else "sop_class_uid", value)
        raise


def _identity(header: Dataset, path: Path, expected_sop_uid: str | None, calling_aet: str, transfer_syntax: str | None,
              expected_study_uid: str | None) -> ReceivedInstance:
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
    if expected_sop_uid is not None and uids["SOPInstanceUID"] != expected_sop_uid:
        raise StoreRejected(
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"(0008,0018) SOPInstanceUID {uids['SOPInstanceUID']} differs from the request's "
            f"Affected SOP Instance UID {expected_sop_uid}",
        )
    if expected_study_uid is not None and uids["StudyInstanceUID"] != expected_study_uid:
        raise StoreRejected(
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"(0020,000D) StudyInstanceUID {uids['StudyInstanceUID']} differs from the study the request was "
            f"addressed to, {expected_study_uid}",
        )
    if transfer_syntax is None:
        meta = getattr(header, "file_meta", None)
        transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
        if not transfer_syntax:
            raise StoreRejected(status.CANNOT_UNDERSTAND,
                                "(0002,0010) TransferSyntaxUID is missing: not a DICOM Part 10 file")
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


def keep_file(temporary: Path, spool: Spool, store: StudyStore, *, calling_aet: str, sender: str,
              expected_sop_uid: str | None = None, transfer_syntax: str | None = None,
              expected_study_uid: str | None = None, write_error: OSError | None = None) -> Kept:
    """Keep a fully received file (in the spool's incoming/ folder) or refuse it; never raises for the
    peer's bytes, the disk or the database. Whatever happens, nothing of `temporary` stays in incoming/.

    `calling_aet` is recorded with the instance; `sender` names the peer in the log; `write_error` is
    the error that interrupted writing the file, if any (answered Out of Resources). One of the node's
    own results sent back (a PACS or archive that forwards whatever arrives) is acknowledged and
    dropped: taken as input, it would re-open its study and send new results, round and round.
    """
    sop_uid = expected_sop_uid or ""
    try:
        if write_error is not None:
            raise OSError(write_error.errno, f"cannot write it to {spool.incoming}: {write_error.strerror or write_error}")
        identity = read_identity(temporary, expected_sop_uid, calling_aet, transfer_syntax, expected_study_uid)
        sop_uid = identity.sop_instance_uid
        if store.is_result(sop_uid):  # a PACS or archive forwarding what it got: our SR, SC... back again
            log.info("instance %s from %s is one of our own results coming back: acknowledged, not taken as input",
                     sop_uid, sender)
            return Kept(status.SUCCESS, sop_uid, identity.sop_class_uid, identity.study_instance_uid)
        return Kept(keep_instance(identity, temporary, spool, store), sop_uid, identity.sop_class_uid,
                    identity.study_instance_uid)
    except StoreRejected as exc:
        sop_uid = sop_uid or exc.sop_instance_uid
        log.error("refused instance %s from %s: %s (status 0x%04X)", sop_uid or "?", sender, exc, exc.status_code)
        return Kept(exc.status_code, sop_uid, exc.sop_class_uid, error=str(exc))
    except (sqlite3.Error, OSError) as exc:  # disk full, database locked past its timeout...
        reason = getattr(exc, "strerror", None) or str(exc)
        log.error("cannot keep instance %s from %s: %s (answered 0x%04X Out of Resources; the sender should retry)",
                  sop_uid or "?", sender, reason, status.OUT_OF_RESOURCES)
        return Kept(status.OUT_OF_RESOURCES, sop_uid, error=f"cannot keep it: {reason}; send it again later")
    finally:
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
