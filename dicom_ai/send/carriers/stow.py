"""Carrier STOW: result objects (SR, Secondary Captures, Parametric Maps) by DICOMweb STOW-RS (PS3.18 10.5).

Like the DICOM carrier, one entry per result file, delivered in batches: one STOW-RS request per
study for all of its due files (dicomweb-client), each file's outcome read from the response's
ReferencedSOPSequence (stored) and FailedSOPSequence (refused, with its FailureReason). An HTTP
error or an unreachable server fails the whole request with one line; the outbox retries it. The
result UIDs are deterministic, so a repeated request stores nothing twice.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicom_ai.domain import Carrier, OutboxEntry, OutboxItem, ResultFile
from dicom_ai.errors import one_line

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.send.carriers import DeliveryContext

log = logging.getLogger(__name__)

CARRIER = Carrier.STOW
TIMEOUT_S = 60.0  # one request: connect, send the files, read the answer
# A study's results go in one request, unless they are larger than this: then in several, so the
# encoded request (which dicomweb-client builds in memory) stays bounded.
MAX_REQUEST_BYTES = 64 * 2**20

# FailureReason values of a STOW-RS response (PS3.18 Table 10.5.3-2 and the C-STORE statuses, PS3.4 B.2.3).
FAILURE_REASONS = {
    0xA700: "refused: out of resources",
    0xA900: "error: data set does not match SOP Class",
    0xC000: "error: cannot understand",
    0xC122: "referenced Transfer Syntax not supported",
    0x0110: "processing failure",
    0x0122: "referenced SOP Class not supported",
    0x0124: "not authorized",
}


def build_results(results: Sequence[ResultFile], settings: Settings) -> list[OutboxEntry]:
    """One send per result file, when a DICOMweb server is configured (stow_url)."""
    if settings.stow_url is None:
        return []
    return [OutboxEntry(CARRIER, result.sop_instance_uid, settings.stow_url, str(result.path)) for result in results]


def client(url: str, settings: Settings) -> DICOMwebClient:
    """A DICOMweb client for `url` with the configured auth; it never retries by itself (the outbox does)."""
    session = requests.Session()
    if settings.stow_user is not None and settings.stow_password is not None:
        session.auth = (settings.stow_user, settings.stow_password)
    elif settings.stow_token is not None:
        session.headers["Authorization"] = f"Bearer {settings.stow_token}"
    made = DICOMwebClient(url, session=session, timeout=TIMEOUT_S)
    made.set_http_retry_params(retry=False)
    return made


def failure_reason(code: int) -> str:
    """`0xA700 (refused: out of resources)`: a FailureReason as a person reads it."""
    meaning = FAILURE_REASONS.get(code) or FAILURE_REASONS.get(code & 0xFF00, "")
    return f"0x{code:04X}" + (f" ({meaning})" if meaning else "")


def deliver_batch(destination: str, items: Sequence[OutboxItem], context: DeliveryContext,
                  answered: Callable[[OutboxItem, str | None], None]) -> None:
    """STOW each study's items to `destination` (a DICOMweb root), one request per study;
    `answered(item, error)` once per item, as the server's response says."""
    by_study: dict[str, list[OutboxItem]] = defaultdict(list)
    for item in items:
        by_study[item.study_instance_uid].append(item)
    for study_items in by_study.values():
        readable: list[tuple[OutboxItem, Dataset]] = []
        for item in study_items:
            try:
                readable.append((item, dcmread(item.payload)))
            except (InvalidDicomError, OSError) as exc:
                answered(item, f"cannot read {item.payload}: {one_line(exc)}")
        for request in _requests(readable):
            _store(destination, request, context, answered)


def _requests(readable: list[tuple[OutboxItem, Dataset]]) -> Iterator[list[tuple[OutboxItem, Dataset]]]:
    """The study's files in requests of at most MAX_REQUEST_BYTES (a larger file goes alone)."""
    request: list[tuple[OutboxItem, Dataset]] = []
    size = 0
    for item, dataset in readable:
        length = Path(item.payload).stat().st_size if Path(item.payload).exists() else 0
        if request and size + length > MAX_REQUEST_BYTES:
            yield request
            request, size = [], 0
        request.append((item, dataset))
        size += length
    if request:
        yield request


def _store(destination: str, request: list[tuple[OutboxItem, Dataset]], context: DeliveryContext,
           answered: Callable[[OutboxItem, str | None], None]) -> None:
    try:
        # POST {root}/studies: the files name their study (ours are in the source study); a study in the
        # URL would only add a way to disagree.
        response = context.stow(destination).store_instances([dataset for _, dataset in request])
    except requests.HTTPError as exc:
        refused = _failed_sops(exc.response)
        reason = _http_error(destination, exc.response)
        for item, _ in request:  # a 409 says which instance failed and why; any other error fails the request
            answered(item, f"{destination} refused it: FailureReason {failure_reason(refused[item.key])}"
                     if item.key in refused else reason)
        return
    except (requests.RequestException, ValueError, OSError) as exc:  # unreachable, timed out, an odd answer
        reason = f"STOW-RS to {destination} failed: {one_line(exc)}"
        for item, _ in request:
            answered(item, reason)
        return
    stored = {str(ref.get("ReferencedSOPInstanceUID", "")) for ref in response.get("ReferencedSOPSequence", [])}
    failed = {str(ref.get("ReferencedSOPInstanceUID", "")): int(ref.get("FailureReason", 0) or 0)
              for ref in response.get("FailedSOPSequence", [])}
    silent = not stored and not failed  # a 2xx without details (PS3.18 asks for them): all stored
    for item, _ in request:
        if item.key in failed:
            answered(item, f"{destination} refused it: FailureReason {failure_reason(failed[item.key])}")
        elif item.key in stored or silent:
            answered(item, None)
        else:
            answered(item, f"{destination} did not acknowledge it in its STOW-RS response")


def _failed_sops(response: requests.Response | None) -> dict[str, int]:
    """SOP Instance UID -> FailureReason from an error response's DICOM JSON body, if it has one."""
    if response is None:
        return {}
    try:
        body = Dataset.from_json(response.json())
        return {str(ref.get("ReferencedSOPInstanceUID", "")): int(ref.get("FailureReason", 0) or 0)
                for ref in body.get("FailedSOPSequence", [])}
    except (ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError):
        return {}


def _http_error(destination: str, response: requests.Response | None) -> str:
    if response is None:
        return f"STOW-RS to {destination} failed without an HTTP response"
    text = " ".join(response.text.split())[:200] if response.text else ""
    hint = " (check stow_user/stow_password or stow_token)" if response.status_code in (401, 403) else ""
    return f"{destination} answered HTTP {response.status_code} {response.reason}{hint}" + (f": {text}" if text else "")
