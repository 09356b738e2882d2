"""Critical-result notices: a JSON POST to a URL (chat bridge, paging system, RIS)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence

from dicom_ai.domain import Finding, ModelInfo, PriorityDecision


class WebhookError(Exception):
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
            {"label": f.label, "code": f"{f.code.scheme} {f.code.value}", "probability": round(f.probability, 4),
             "present": f.present}
            for f in sorted(findings, key=lambda f: -f.probability)
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
