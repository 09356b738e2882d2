"""Where a study's priority goes: one outbox item per configured carrier, all from one decision.

A radiologist's override outranks the AI's level everywhere (its reason first, the AI's after),
so Orthanc's flags, the worklist entry, the HL7 result and the notices never disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dicom_ai.domain import Finding, ModelInfo, Priority, PriorityDecision, Study
from dicom_ai.prioritize.hl7_result import oru_message
from dicom_ai.prioritize.mwl import mwl_payload
from dicom_ai.prioritize.orthanc_flags import flags_payload
from dicom_ai.send.outbox import EMAIL, HL7, MWL, ORTHANC_METADATA, WEBHOOK
from dicom_ai.send.webhook import email_payload, notice_payload

if TYPE_CHECKING:
    from dicom_ai.config import Settings

log = logging.getLogger(__name__)

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
) -> tuple[list[OutboxEntry], list[str]]:
    """Outbox items for every carrier the settings enable (notices only at their levels), and the
    carriers skipped because their message could not be built.

    A carrier that cannot be built (a bug, or a value no format anticipated) is skipped and named,
    so the SR, the heatmaps and the other carriers still reach the radiologist; the pipeline
    records the skip and `dicom-ai status` shows it.
    """
    uid, header = study.study_instance_uid, study.header
    items: list[OutboxEntry] = []
    skipped: list[str] = []

    def add(kind: str, destination: str, build: Callable[[], str]) -> None:
        try:
            items.append((kind, uid, destination, build()))
        except Exception as exc:  # noqa: BLE001: one carrier must not hold back the others
            log.exception("study %s: the %s result could not be built and is skipped", uid, kind)
            skipped.append(f"{kind} to {destination}: {type(exc).__name__}: {exc}")

    if settings.orthanc_url:
        add(ORTHANC_METADATA, settings.orthanc_url, lambda: flags_payload(priority, findings, models))
    if settings.mwl_dir is not None:
        add(MWL, str(settings.mwl_dir), lambda: mwl_payload(header, priority.level.name, "; ".join(priority.reasons)))
    if settings.hl7_mllp:
        add(HL7, settings.hl7_mllp, lambda: oru_message(header, priority, findings, models,
                                                        settings.hl7_receiving_application,
                                                        settings.hl7_receiving_facility))
    patient = {
        "PatientID": str(header.get("PatientID", "")),
        "PatientName": str(header.get("PatientName", "")),
        "AccessionNumber": str(header.get("AccessionNumber", "")),
    } if settings.notify_include_patient else None
    def notice() -> str:  # built only for a notice that goes out, and inside `add`'s guard
        return notice_payload(uid, priority, findings, models, patient)

    if settings.webhook_url and priority.level.name in settings.webhook_levels:
        add(WEBHOOK, settings.webhook_url, notice)
    if settings.smtp_host and settings.smtp_to and priority.level.name in settings.email_levels:
        add(EMAIL, f"{settings.smtp_host}:{settings.smtp_port}",
            lambda: email_payload(notice(), settings.smtp_from, settings.smtp_to))
    return items, skipped
