"""Carrier ORTHANC_METADATA: the priority and findings on the study in Orthanc as user metadata
(names declared in orthanc/orthanc.json; orthanc/README.md documents each)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from orthanc_api_client import OrthancApiClient

from dicom_ai.domain import Carrier, Finding, ModelInfo, OutboxEntry, OutboxItem, PriorityDecision, summarize_findings
from dicom_ai.send.errors import DeliveryError

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.send.carriers import DeliveryContext, Publication

CARRIER = Carrier.ORTHANC_METADATA

log = logging.getLogger(__name__)

# Study-level user metadata; orthanc/README.md documents each one.
AI_PRIORITY = "AiPriority"
AI_SCORE = "AiScore"
AI_FINDINGS = "AiFindings"
AI_REASONS = "AiReasons"
AI_MODEL = "AiModel"
AI_UPDATED = "AiUpdated"


class OrthancFlagError(DeliveryError):
    """Orthanc did not take the metadata; the outbox retries."""


def findings_summary(findings: Sequence[Finding]) -> str:
    """AiFindings: one entry per label, e.g. "Mass 92% (present on 1 of 4 images); ..."."""
    return "; ".join(summary.describe() for summary in summarize_findings(findings))


def flags_payload(
    priority: PriorityDecision,
    findings: Sequence[Finding],
    models: Sequence[ModelInfo],
) -> str:
    """The metadata values as JSON, stored in the outbox so a retry sends exactly the same."""
    summary = findings_summary(findings)
    reasons = "; ".join(priority.reasons)
    values = {
        AI_PRIORITY: priority.level.name,
        AI_SCORE: f"{priority.score:.4f}",
        AI_FINDINGS: summary or "none",
        AI_REASONS: reasons,
        AI_MODEL: ", ".join(f"{m.name} {m.version}" for m in models),
        AI_UPDATED: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return json.dumps(values, sort_keys=True)


def override_payload(priority: PriorityDecision) -> str:
    """The flags a priority change touches (an override or its removal): level, reasons, time."""
    values = {
        AI_PRIORITY: priority.level.name,
        AI_REASONS: "; ".join(priority.reasons),
        AI_UPDATED: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return json.dumps(values, sort_keys=True)


def build(publication: Publication, settings: Settings) -> OutboxEntry | None:
    """The study's flags, when Orthanc's REST API is configured (orthanc_url)."""
    if not settings.orthanc_url:
        return None
    payload = flags_payload(publication.priority, publication.findings, publication.models)
    return OutboxEntry(CARRIER, publication.study_instance_uid, settings.orthanc_url, payload)


def rebuild(previous: str | None, study_uid: str, priority: PriorityDecision, settings: Settings) -> OutboxEntry | None:
    """New flags for a priority change (an override), whatever was published before."""
    if not settings.orthanc_url:
        return None
    return OutboxEntry(CARRIER, study_uid, settings.orthanc_url, override_payload(priority))


def deliver(item: OutboxItem, context: DeliveryContext) -> None:
    context.orthanc(item.destination).publish(item.study_instance_uid, item.payload)


class OrthancFlags:
    """Publishes metadata to one Orthanc over its REST API."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None) -> None:
        self.url = url
        self._client = OrthancApiClient(url, user=user, pwd=password)

    def publish(self, study_instance_uid: str, payload: str) -> None:
        values: Mapping[str, str] = json.loads(payload)
        try:
            orthanc_id = self._client.studies.lookup(study_instance_uid)
        except Exception as exc:  # the client raises its own HTTP and connection errors
            raise OrthancFlagError(f"Orthanc at {self.url}: cannot look up study {study_instance_uid}: {exc}") from exc
        if not orthanc_id:
            raise OrthancFlagError(f"Orthanc at {self.url} has no study {study_instance_uid} (yet)")
        for name, value in values.items():
            try:
                self._client.studies.set_string_metadata(orthanc_id, name, value)
            except Exception as exc:
                raise OrthancFlagError(
                    f"Orthanc at {self.url}: cannot set metadata {name} on study {study_instance_uid} "
                    f"(is it declared in UserMetadata?): {exc}"
                ) from exc
        log.info("flagged study %s in Orthanc: %s", study_instance_uid, values.get(AI_PRIORITY))
