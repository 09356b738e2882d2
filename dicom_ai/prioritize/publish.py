"""Where a study's priority goes: one outbox item per configured carrier, all from one decision.

A radiologist's override outranks the AI's level everywhere (its reason first, the AI's after),
so Orthanc's flags, the worklist entry, the HL7 result and the notices never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dicom_ai.domain import Finding, ModelInfo, Priority, PriorityDecision, Study
from dicom_ai.prioritize.hl7_result import oru_message
from dicom_ai.prioritize.mwl import mwl_payload
from dicom_ai.prioritize.orthanc_flags import flags_payload
from dicom_ai.send.outbox import EMAIL, HL7, MWL, ORTHANC_METADATA, WEBHOOK
from dicom_ai.send.webhook import email_payload, notice_payload

if TYPE_CHECKING:
    from dicom_ai.config import Settings

OutboxEntry = tuple[str, str, str, str]  # kind, key, destination, payload


def with_override(priority: PriorityDecision, override: tuple[str, str, str] | None) -> PriorityDecision:
    """The decision as published: the override's level and reason, if a radiologist set one."""
    if override is None:
        return priority
    level, why, by = override
    return PriorityDecision(Priority[level], priority.score, (f"set to {level} by {by}: {why}",
                                                              f"AI said {priority.level.name}", *priority.reasons))


def publications(
    study: Study,
    priority: PriorityDecision,
    findings: Sequence[Finding],
    models: Sequence[ModelInfo],
    settings: Settings,
) -> list[OutboxEntry]:
    """Outbox items for every carrier the settings enable (notices only at their levels)."""
    uid, header = study.study_instance_uid, study.header
    items: list[OutboxEntry] = []
    if settings.orthanc_url:
        items.append((ORTHANC_METADATA, uid, settings.orthanc_url, flags_payload(priority, findings, models)))
    if settings.mwl_dir is not None:
        items.append((MWL, uid, str(settings.mwl_dir),
                      mwl_payload(header, priority.level.name, "; ".join(priority.reasons))))
    if settings.hl7_mllp:
        message = oru_message(header, priority, findings, models, settings.hl7_receiving_application,
                              settings.hl7_receiving_facility)
        items.append((HL7, uid, settings.hl7_mllp, message))
    patient = {
        "PatientID": str(header.get("PatientID", "")),
        "PatientName": str(header.get("PatientName", "")),
        "AccessionNumber": str(header.get("AccessionNumber", "")),
    } if settings.notify_include_patient else None
    notice = notice_payload(uid, priority, findings, models, patient)
    if settings.webhook_url and priority.level.name in settings.webhook_levels:
        items.append((WEBHOOK, uid, settings.webhook_url, notice))
    if settings.smtp_host and settings.smtp_to and priority.level.name in settings.email_levels:
        items.append((EMAIL, uid, f"{settings.smtp_host}:{settings.smtp_port}",
                      email_payload(notice, settings.smtp_from, settings.smtp_to)))
    return items
