"""Send an HL7 v2 message over MLLP and insist on a positive acknowledgement."""

from __future__ import annotations

import hl7
from hl7.client import MLLPClient

from dicom_ai.send.errors import DeliveryError


class MllpError(DeliveryError):
    """The receiver was unreachable or did not accept the message; the outbox retries."""


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
