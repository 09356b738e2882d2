"""Carrier WEBHOOK: a result notice as a JSON POST to a URL (chat bridge, paging system, RIS), for
results at the configured levels (webhook_levels); no patient identifiers unless configured."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dicom_ai.domain import Carrier, Finding, ModelInfo, OutboxEntry, OutboxItem, PriorityDecision, summarize_findings
from dicom_ai.send.errors import DeliveryError

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.send.carriers import DeliveryContext, Publication

CARRIER = Carrier.WEBHOOK


class WebhookError(DeliveryError):
    """The receiver did not accept the notice; the outbox retries."""


def notice_payload(
    study_uid: str,
    priority: PriorityDecision,
    findings: Sequence[Finding],
    models: Sequence[ModelInfo],
    patient: dict[str, str] | None,
) -> str:
    """The notice as JSON; patient identifiers only when `patient` is given (configured).

    Deterministic for the same result, so a re-run after a crash does not notify twice.
    """
    body: dict[str, object] = {
        "event": "dicom-ai.result",
        "study_instance_uid": study_uid,
        "priority": priority.level.name,
        "score": round(priority.score, 4),
        "reasons": list(priority.reasons),
        "findings": [
            {"label": s.label, "code": f"{s.code.scheme} {s.code.value}", "probability": round(s.probability, 4),
             "present": s.present, "images": s.images, "images_present": s.images_present}
            for s in summarize_findings(findings)
        ],
        "models": [f"{m.name} {m.version}" for m in models],
        "not_for_clinical_use": any(m.not_for_clinical_use for m in models),
    }
    if patient is not None:
        body["patient"] = patient
    return json.dumps(body, sort_keys=True)


def post_notice(url: str, payload: str, timeout: float = 10.0) -> None:
    request = urllib.request.Request(
        url, data=payload.encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "dicom-ai"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"webhook {url} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise WebhookError(f"webhook {url} unreachable: {getattr(exc, 'reason', exc)}") from exc
    if not 200 <= status < 300:
        raise WebhookError(f"webhook {url} answered HTTP {status}")


def patient_identifiers(publication: Publication, settings: Settings) -> dict[str, str] | None:
    """PatientID, PatientName and AccessionNumber for notices, only when notify_include_patient is on."""
    if not settings.notify_include_patient:
        return None
    header = publication.header
    return {key: str(header.get(key, "")) for key in ("PatientID", "PatientName", "AccessionNumber")}


def notice(publication: Publication, settings: Settings) -> str:
    return notice_payload(publication.study_instance_uid, publication.priority, publication.findings,
                          publication.models, patient_identifiers(publication, settings))


def build(publication: Publication, settings: Settings) -> OutboxEntry | None:
    """The notice, when a webhook is configured and the result's priority is one that notifies."""
    if not settings.webhook_url or publication.priority.level.name not in settings.webhook_levels:
        return None
    return OutboxEntry(CARRIER, publication.study_instance_uid, settings.webhook_url, notice(publication, settings))


def deliver(item: OutboxItem, context: DeliveryContext) -> None:
    post_notice(item.destination, item.payload)
