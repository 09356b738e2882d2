"""Carrier HL7: the result and its priority as an HL7 v2.5 ORU^R01, sent over MLLP to a RIS.

Priority goes where order systems look for it: TQ1-9 (S stat, A asap for our URGENT, R routine),
and the findings go as numeric OBX, one per label (its highest probability over the study's images,
in %), with an abnormal flag when present on any image. Built
and checked with hl7apy's strict validation, so a malformed message never leaves the node.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime

from typing import TYPE_CHECKING

import hl7
from hl7.client import MLLPClient
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from dicom_ai.domain import Carrier, Finding, ModelInfo, OutboxEntry, OutboxItem, PriorityDecision, summarize_findings
from dicom_ai.send.errors import DeliveryError

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.send.carriers import DeliveryContext, Publication

CARRIER = Carrier.HL7

# HL7 table 0485 (Extended Priority Codes).
TQ1_PRIORITY = {"STAT": "S^Stat^HL70485", "URGENT": "A^ASAP^HL70485", "ROUTINE": "R^Routine^HL70485"}


# Lengths hl7apy's strict validation enforces: OBX-5 and ST components (a coded meaning, a name
# part) are checked as ST, NTE-3 as FT.
OBX_TEXT_MAX = 199
COMPONENT_MAX = 199
NTE_TEXT_MAX = 65536
# PID-5 is required: a study without a name (de-identified, minimal sender) gets an XPN with no name
# parts and name type U (HL7 table 0200: unspecified). HL7 null "" would tell the RIS to delete its name.
NO_NAME = "^^^^^^U"


def _text(value: object) -> str:
    """A header value as text; a multi-valued one (a name or ID with a backslash) as its first value."""
    if isinstance(value, MultiValue | list):
        value = value[0] if value else ""
    return "" if value is None else str(value)


def _person_name(value: object) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) as HL7 XPN (family^given^middle^suffix^prefix)."""
    text = _text(value)
    if not text:
        return ""
    name = PersonName(text)
    parts = [name.family_name, name.given_name, name.middle_name, name.name_suffix, name.name_prefix]
    return "^".join(_clean(part).strip()[:COMPONENT_MAX] for part in parts).rstrip("^")


def _fit(text: str, limit: int, tail: str) -> str:
    """`text` cut to fit `limit` with `tail` (the demo warning) always kept whole at the end."""
    room = limit - len(tail)
    return (text if len(text) <= room else text[: room - 3] + "...") + tail


def _clean(text: str) -> str:
    """HL7 delimiters would split a field, and control characters end a segment (CR) or cut the
    MLLP frame (VT, FS) or are invalid text: replace them all in values taken from elsewhere."""
    return "".join(" " if ch in "|^~\\&" or unicodedata.category(ch) == "Cc" else ch for ch in text)


def oru_message(
    header: Dataset,
    priority: PriorityDecision,
    findings: Sequence[Finding],
    models: Sequence[ModelInfo],
    receiving_application: str,
    receiving_facility: str,
) -> str:
    """An ORU^R01 (ER7 text) for one study's AI result."""
    study_uid = str(header.get("StudyInstanceUID", ""))
    accession = _clean(_text(header.get("AccessionNumber"))).strip()
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    message = Message("ORU_R01", version="2.5", validation_level=VALIDATION_LEVEL.STRICT)
    message.msh.msh_3 = "DICOM_AI"
    message.msh.msh_5 = _clean(receiving_application)
    if receiving_facility:
        message.msh.msh_6 = _clean(receiving_facility)
    message.msh.msh_7 = now
    message.msh.msh_9 = "ORU^R01^ORU_R01"
    message.msh.msh_10 = hashlib.sha1(f"{study_uid}|{now}".encode()).hexdigest()[:20]
    message.msh.msh_11 = "P"
    message.msh.msh_18 = "UNICODE UTF-8"  # what the MLLP client sends; names are often not ASCII
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    patient.pid.pid_3 = _clean(_text(header.get("PatientID"))).strip() or "UNKNOWN"  # required
    patient.pid.pid_5 = _person_name(header.get("PatientName")) or NO_NAME
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.orc.orc_1 = "RE"
    order.orc.orc_3 = accession or _clean(study_uid[-22:]).strip()
    order.obr.obr_3 = accession or _clean(study_uid[-22:]).strip()
    order.obr.obr_4 = "AI^" + _clean(", ".join(f"{m.name} {m.version}" for m in models))[:190] + "^L"
    order.obr.obr_7 = now
    order.obr.obr_25 = "P"  # preliminary: a radiologist reads it
    timing = order.add_group("ORU_R01_TIMING_QTY")
    timing.tq1.tq1_9 = TQ1_PRIORITY[priority.level.name]
    summaries = summarize_findings(findings)[:50]
    for index, finding in enumerate(summaries, 1):
        observation = order.add_group("ORU_R01_OBSERVATION")
        obx = observation.obx
        obx.obx_1 = str(index)
        obx.obx_2 = "NM"
        meaning = _clean(finding.code.meaning)[:COMPONENT_MAX]
        obx.obx_3 = f"{_clean(finding.code.value)[:COMPONENT_MAX]}^{meaning}^{'SCT' if finding.code.scheme == 'SCT' else 'L'}"
        obx.obx_5 = f"{finding.probability * 100:.1f}"
        obx.obx_6 = "%"
        if finding.present:
            obx.obx_8 = "A"
        obx.obx_11 = "P"
    reasons = order.add_group("ORU_R01_OBSERVATION")
    reasons.obx.obx_1 = str(len(summaries) + 1)
    reasons.obx.obx_2 = "TX"
    reasons.obx.obx_3 = "PRIORITY^AI reading priority^L"
    demo = " NOT FOR CLINICAL USE (demo model)." if any(m.not_for_clinical_use for m in models) else ""
    why = _clean(f"{priority.level.name}: {'; '.join(priority.reasons)}.")
    reasons.obx.obx_5 = _fit(why, OBX_TEXT_MAX, demo)
    reasons.obx.obx_11 = "P"
    # The whole story, where length is no issue: every reason and every label with its image count.
    found = "; ".join(summary.describe() for summary in summaries) or "no finding"
    note = reasons.add_segment("NTE")
    note.nte_1 = "1"
    note.nte_3 = _fit(_clean(f"{why} Findings: {found}."), NTE_TEXT_MAX, demo)
    return str(message.to_er7())


def build(publication: Publication, settings: Settings) -> OutboxEntry | None:
    """The ORU for a study's result, when an HL7 receiver is configured (hl7_mllp)."""
    if not settings.hl7_mllp:
        return None
    message = oru_message(publication.header, publication.priority, publication.findings, publication.models,
                          settings.hl7_receiving_application, settings.hl7_receiving_facility)
    return OutboxEntry(CARRIER, publication.study_instance_uid, settings.hl7_mllp, message)


class MllpError(DeliveryError):
    """The receiver was unreachable or did not accept the message; the outbox retries."""


def deliver(item: OutboxItem, context: DeliveryContext) -> None:
    send_hl7(item.destination, item.payload)


def send_hl7(destination: str, message: str, timeout: float = 10.0) -> None:
    """`destination` is host:port; the ACK's MSA-1 must be AA or CA."""
    host, _, port = destination.rpartition(":")
    try:
        with MLLPClient(host, int(port)) as client:
            client.socket.settimeout(timeout)
            answer = client.send_message(message)
    except (OSError, ValueError) as exc:
        raise MllpError(f"HL7 receiver {destination} unreachable: {exc}") from exc
    text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)
    try:
        code = str(hl7.parse(text.strip("\x0b\x1c\r\n")).segment("MSA")[1])
    except (KeyError, IndexError, hl7.ParseException) as exc:
        raise MllpError(f"HL7 receiver {destination} answered without a valid MSA: {text[:200]!r}") from exc
    if code not in ("AA", "CA"):
        raise MllpError(f"HL7 receiver {destination} answered {code}: {text[:200]!r}")
