"""Result notices: a JSON POST to a URL (chat bridge, paging system, RIS), or an e-mail over SMTP."""

from __future__ import annotations

import json
import smtplib
import urllib.error
import urllib.request
from collections.abc import Sequence
from email.message import EmailMessage

from dicom_ai.domain import Finding, ModelInfo, PriorityDecision, summarize_findings
from dicom_ai.send.errors import DeliveryError


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


class EmailError(DeliveryError):
    """The SMTP server did not take the e-mail; the outbox retries."""


def email_payload(notice: str, sender: str, recipients: Sequence[str]) -> str:
    """An e-mail made from a notice (see notice_payload), as JSON for the outbox."""
    body = json.loads(notice)
    findings = "\n".join(f"  {f['label']} ({f['code']}): {f['probability']:.0%}{_presence(f)}" for f in body["findings"])
    lines = [
        f"AI priority: {body['priority']}",
        f"Why: {'; '.join(body['reasons'])}",
        f"Study Instance UID: {body['study_instance_uid']}",
        *(f"{key}: {value}" for key, value in body.get("patient", {}).items()),
        "Findings:", findings or "  none",
        f"Model(s): {', '.join(body['models'])}",
    ]
    if body["not_for_clinical_use"]:
        lines.append("NOT FOR CLINICAL USE: demo model trained on synthetic data.")
    subject = f"[dicom-ai] {body['priority']} result for study ...{body['study_instance_uid'][-12:]}"
    return json.dumps({"from": sender, "to": list(recipients), "subject": subject, "body": "\n".join(lines)},
                      sort_keys=True)


def _presence(finding: dict[str, object]) -> str:
    if not finding["present"]:
        return ""
    images = finding.get("images", 1)
    return " PRESENT" if images == 1 else f" PRESENT on {finding['images_present']} of {images} images"


def send_email(destination: str, payload: str, timeout: float = 10.0) -> None:
    """`destination` is the SMTP server as host:port."""
    values = json.loads(payload)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = values["from"], ", ".join(values["to"]), values["subject"]
    message.set_content(values["body"])
    host, _, port = destination.rpartition(":")
    try:
        with smtplib.SMTP(host, int(port), timeout=timeout) as smtp:
            smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        raise EmailError(f"SMTP server {destination}: {exc}") from exc
