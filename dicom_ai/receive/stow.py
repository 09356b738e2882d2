"""STOW-RS receive (DICOM PS3.18 10.5): a multipart/related upload of DICOM Part 10 files, parsed as it
streams, each part kept exactly as the C-STORE SCP keeps an instance (receive/keep.py).

Nothing of an upload is held in memory beyond the piece being parsed: python-multipart's low-level
parser hands each part's bytes over as they arrive, and they go straight to a file in the spool's
incoming/ folder. When a part ends, `keep_file` reads its identity, fsyncs and files it and commits
its row; the answer, built only after the last part was kept, names every instance stored
(ReferencedSOPSequence) and every one refused with its FailureReason (FailedSOPSequence).
This module knows nothing of HTTP servers: web/stow.py feeds it a request's body.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydicom import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState

from dicom_ai.receive import status
from dicom_ai.receive.keep import Kept, keep_file

if TYPE_CHECKING:
    from dicom_ai.store import Spool, StudyStore

log = logging.getLogger(__name__)

DICOM_MEDIA_TYPE = "application/dicom"
CALLING_AET = "STOW-RS"  # recorded as the instances' calling AE title: they came without one
WRITE_BUFFER = 1024 * 1024  # bytes buffered per part file between writes

# FailureReason (0008,1197) per SCP status: STOW-RS uses the C-STORE failure codes (PS3.18 10.5.3).
FAILURE_REASON: dict[int, int] = {
    status.OUT_OF_RESOURCES: 0xA700,  # refused: out of resources (the disk, the database): send again later
    status.DATASET_DOES_NOT_MATCH_SOP_CLASS: 0xA900,  # UIDs missing or malformed, or not the request's study
    status.CANNOT_UNDERSTAND: 0xC000,  # not a DICOM Part 10 file we can parse
}
UNSUPPORTED_PART = 0xC122  # a part that is not application/dicom (metadata, bulk data): refused, unknown to us

# HTTP statuses of a STOW-RS answer (PS3.18 Table 10.5.3-1).
ALL_STORED = 200
SOME_STORED = 202
NONE_STORED = 409
BAD_REQUEST = 400
UNSUPPORTED_MEDIA_TYPE = 415


class StowError(Exception):
    """The request as a whole is refused; `http_status` says how, the message says why in one line."""

    def __init__(self, http_status: int, message: str, outcome: StowOutcome | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.outcome = outcome  # what was kept before the request went wrong, if anything


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a STOW-RS request's Content-Type; StowError 415 for anything else than
    multipart/related; type="application/dicom" with a boundary."""
    media_type, *parameters = [part.strip() for part in content_type.split(";")]
    values: dict[str, str] = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        values[name.strip().lower()] = value.strip().strip('"')
    expected = f'multipart/related; type="{DICOM_MEDIA_TYPE}"'
    if media_type.lower() != "multipart/related" or values.get("type", "").lower() != DICOM_MEDIA_TYPE:
        raise StowError(UNSUPPORTED_MEDIA_TYPE, f"expected Content-Type {expected}, got {content_type or 'none'!r} "
                                                "(this node takes DICOM Part 10 instances only)")
    if not values.get("boundary"):
        raise StowError(UNSUPPORTED_MEDIA_TYPE, f"Content-Type {content_type!r} has no boundary parameter")
    return values["boundary"].encode("latin-1")


@dataclass
class StowOutcome:
    """Every part's outcome, in order; the HTTP status and DICOM JSON answer that follow from them."""

    parts: list[Kept] = field(default_factory=list)

    @property
    def stored(self) -> list[Kept]:
        return [part for part in self.parts if part.ok]

    @property
    def failed(self) -> list[Kept]:
        return [part for part in self.parts if not part.ok]

    @property
    def http_status(self) -> int:
        if not self.failed:
            return ALL_STORED
        return SOME_STORED if self.stored else NONE_STORED

    def answer(self) -> dict[str, Any]:
        """The Store Instances Response Module as DICOM JSON (PS3.18 10.5.3)."""
        response = Dataset()
        response.ReferencedSOPSequence = [_reference(part) for part in self.stored]
        response.FailedSOPSequence = [_reference(part, FAILURE_REASON.get(part.status, part.status))
                                      for part in self.failed]
        return response.to_json_dict()


def _reference(part: Kept, failure_reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = part.sop_class_uid
    item.ReferencedSOPInstanceUID = part.sop_instance_uid
    if failure_reason is not None:
        item.FailureReason = failure_reason
    return item


class StowUpload:
    """One STOW-RS request body: `feed` its bytes as they arrive, then `finish` (or `abandon`)."""

    def __init__(self, boundary: bytes, spool: Spool, store: StudyStore, *, sender: str,
                 study_uid: str | None = None) -> None:
        self.spool = spool
        self.store = store
        self.sender = sender
        self.study_uid = study_uid
        self.outcome = StowOutcome()
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._path: Path | None = None
        self._file: IO[bytes] | None = None
        self._write_error: OSError | None = None
        self._refused_type: str | None = None  # the media type of a part we do not take
        try:
            self._parser = MultipartParser(boundary, callbacks={
                "on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end})
        except (ValueError, MultipartParseError) as exc:
            raise StowError(UNSUPPORTED_MEDIA_TYPE, f"unusable multipart boundary: {exc}") from exc

    def feed(self, chunk: bytes) -> None:
        """Parse the next bytes of the body; a part that ends in them is kept before this returns."""
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            self.abandon()
            raise StowError(BAD_REQUEST, f"the multipart/related body is malformed: {exc}", self.outcome) from exc

    def finish(self) -> StowOutcome:
        """The outcome, once the whole body was fed; StowError 400 when it ended before its closing
        boundary (a cut-off part is dropped) or held no instance at all."""
        if self._parser.state is not MultipartState.END:
            self.abandon()
            raise StowError(BAD_REQUEST, "the multipart/related body ended before its closing boundary", self.outcome)
        if not self.outcome.parts:
            raise StowError(BAD_REQUEST, "the request holds no instance")
        log.info("upload from %s: %d instance(s) stored, %d refused", self.sender, len(self.outcome.stored),
                 len(self.outcome.failed))
        return self.outcome

    def abandon(self) -> None:
        """Drop the part being received (the body was cut off, too large, or malformed)."""
        self._drop_file()
        self._path = None

    def _drop_file(self) -> None:
        try:
            self._close()
        except OSError:
            pass  # its bytes are being thrown away anyway
        if self._path is not None:
            self.spool.discard(self._path)

    # the parser's callbacks ---------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._headers = {}
        self._write_error = None
        self._refused_type = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field).strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        media_type = self._headers.get(b"content-type", DICOM_MEDIA_TYPE.encode()).split(b";")[0].strip().lower()
        if media_type != DICOM_MEDIA_TYPE.encode():
            self._refused_type = media_type.decode("latin-1", "replace")
            return
        handle, name = tempfile.mkstemp(dir=self.spool.incoming, suffix=".dcm")
        self._path = Path(name)
        self._file = os.fdopen(handle, "wb", buffering=WRITE_BUFFER)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None or self._write_error is not None:
            return  # a refused part, or one whose file failed: the rest of it is read and dropped
        try:
            self._file.write(memoryview(data)[start:end])
        except OSError as exc:  # disk full: answered A700 for this part, its partial file removed now
            self._write_error = exc
            self._drop_file()

    def _part_end(self) -> None:
        number = len(self.outcome.parts) + 1
        if self._refused_type is not None:
            log.error("refused part %d from %s: it is %s, not %s (FailureReason 0x%04X)", number, self.sender,
                      self._refused_type, DICOM_MEDIA_TYPE, UNSUPPORTED_PART)
            self.outcome.parts.append(Kept(UNSUPPORTED_PART, "", error=f"part {number} is {self._refused_type}, "
                                                                        f"not {DICOM_MEDIA_TYPE}"))
            return
        try:
            self._close()
        except OSError as exc:  # the last buffered bytes could not be written
            self._write_error = self._write_error or exc
        path, self._path = self._path, None
        assert path is not None  # every application/dicom part has its file (_headers_finished)
        self.outcome.parts.append(keep_file(path, self.spool, self.store, calling_aet=CALLING_AET, sender=self.sender,
                                            expected_study_uid=self.study_uid, write_error=self._write_error))

    def _close(self) -> None:
        if self._file is not None:
            handle, self._file = self._file, None
            handle.close()
