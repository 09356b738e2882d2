"""Carrier EMAIL: a result notice as an e-mail over SMTP (a local relay), for results at the configured
levels (email_levels); built from the same notice as the webhook's."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from typing import TYPE_CHECKING

from dicom_ai.domain import Carrier, OutboxEntry, OutboxItem
from dicom_ai.send.carriers.webhook import notice
from dicom_ai.send.errors import DeliveryError

if TYPE_CHECKING:
    from dicom_ai.config import Settings
    from dicom_ai.send.carriers import DeliveryContext, Publication

CARRIER = Carrier.EMAIL


class EmailError(DeliveryError):
    """The SMTP server did not take the e-mail; the outbox retries."""


def email_payload(notice_json: str, sender: str, recipients: Sequence[str]) -> str:
    """An e-mail made from a notice (see notice_payload), as JSON for the outbox."""
    body = json.loads(notice_json)
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


def build(publication: Publication, settings: Settings) -> OutboxEntry | None:
    """The e-mail, when an SMTP server and recipients are configured and the priority is one that mails."""
    if not (settings.smtp_host and settings.smtp_to) or publication.priority.level.name not in settings.email_levels:
        return None
    return OutboxEntry(CARRIER, publication.study_instance_uid, f"{settings.smtp_host}:{settings.smtp_port}",
                       email_payload(notice(publication, settings), settings.smtp_from, settings.smtp_to))


def deliver(item: OutboxItem, context: DeliveryContext) -> None:
    send_email(item.destination, item.payload)
