"""An inbound radiology report (HL7 v2 ORU^R01) as the validation loop reads it, and the ACK it answers.

Only what matching and derivation need is read: the message control ID, the order's accession
number (OBR-3 filler order number, else OBR-2 placer order number, OBR-18 placer field 1, ORC-3
and ORC-2), the patient (PID-3) and the date of the examination (OBR-7, else OBR-22), the result
status (OBR-25: F final, C corrected), the report text (OBX of type TX, FT, ST or CE/CWE text, and
NTE comments, HL7 escapes undone) and the coded observations (OBX-3, OBX-5, OBX-8). A message that
is not HL7 at all, or not an ORU^R01 with a PID and an OBR, is malformed: it is answered AR.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

ACCEPT, ERROR, REJECT = "AA", "AE", "AR"  # MSA-1 acknowledgment codes (HL7 table 0008)
FINAL_STATUSES = ("F", "C")  # OBR-25 result status: final, corrected (HL7 table 0123)
TEXT_TYPES = ("TX", "FT", "ST")
CODED_TYPES = ("CE", "CWE", "CNE")
MAX_ACK_TEXT = 80  # MSA-3 text message (ST 80 in v2.5)


class MalformedMessage(ValueError):
    """Not an ORU^R01 we can read; answered AR with this message."""


@dataclass(frozen=True)
class Observation:
    """One OBX: its identifier (OBX-3.1), value type, value as text, and abnormal flag (OBX-8)."""

    identifier: str
    value_type: str
    value: str
    abnormal_flag: str


@dataclass(frozen=True)
class ParsedReport:
    """What the validation loop needs from one ORU^R01."""

    control_id: str
    sender: str  # MSH-3^MSH-4
    accessions: tuple[str, ...]  # candidates in the order they are tried
    patient_id: str
    study_date: str  # YYYYMMDD, "" when unknown
    status: str  # OBR-25 of the first OBR
    text: str  # the report text, one paragraph per OBX or NTE
    observations: tuple[Observation, ...]

    @property
    def accession_number(self) -> str:
        return self.accessions[0] if self.accessions else ""

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


class _Encoding:
    def __init__(self, msh: str) -> None:
        if len(msh) < 8 or not msh.startswith("MSH"):
            raise MalformedMessage("not HL7: the message does not start with an MSH segment")
        self.field = msh[3]
        chars = msh[4:8]
        if self.field.isalnum() or len(set(chars + self.field)) != 5 or any(c.isalnum() for c in chars):
            raise MalformedMessage("MSH-1/MSH-2: the field separator and encoding characters are not valid")
        self.component, self.repetition, self.escape, self.subcomponent = chars[0], chars[1], chars[2], chars[3]

    def unescape(self, text: str) -> str:
        """HL7 escape sequences (\\F\\, \\S\\, \\T\\, \\R\\, \\E\\, \\.br\\) back to their characters."""
        e = re.escape(self.escape)
        values = {"F": self.field, "S": self.component, "T": self.subcomponent, "R": self.repetition,
                  "E": self.escape, ".br": "\n"}
        return re.sub(f"{e}(F|S|T|R|E|\\.br|[^{e}]*){e}", lambda m: values.get(m.group(1), ""), text)


def parse_report(message: str) -> ParsedReport:
    """Read an ORU^R01 (ER7 text, segments separated by CR); MalformedMessage says what is wrong."""
    segments = [s for s in re.split(r"\r\n|\r|\n", message.strip("\x0b\x1c\r\n ")) if s.strip()]
    if not segments:
        raise MalformedMessage("empty message")
    encoding = _Encoding(segments[0])
    fields = [_fields(segment, encoding) for segment in segments]
    for segment in fields:
        if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", segment[0]):
            raise MalformedMessage(f"segment {segment[0][:10]!r} is not an HL7 segment name")
    msh = fields[0]
    message_type = _component(_field(msh, 9), encoding, 0), _component(_field(msh, 9), encoding, 1)
    if message_type != ("ORU", "R01"):
        raise MalformedMessage(f"MSH-9 is {'^'.join(message_type) or 'empty'}; only ORU^R01 reports are read")
    control_id = _field(msh, 10)
    if not control_id:
        raise MalformedMessage("MSH-10 (message control ID) is empty")
    pid = _first(fields, "PID")
    obr = _first(fields, "OBR")
    if pid is None or obr is None:
        raise MalformedMessage("an ORU^R01 needs a PID and an OBR segment")
    orc = _first(fields, "ORC")
    candidates = [_component(_field(obr, 3), encoding, 0), _component(_field(obr, 2), encoding, 0), _field(obr, 18)]
    if orc is not None:
        candidates += [_component(_field(orc, 3), encoding, 0), _component(_field(orc, 2), encoding, 0)]
    accessions = tuple(dict.fromkeys(encoding.unescape(c).strip() for c in candidates if c.strip()))
    patient_id = encoding.unescape(_component(_first_repetition(_field(pid, 3), encoding), encoding, 0)).strip()
    when = _field(obr, 7) or _field(obr, 22)
    study_date = when[:8] if re.fullmatch(r"\d{8}", when[:8]) else ""
    texts: list[str] = []
    observations: list[Observation] = []
    for segment in fields:
        if segment[0] == "OBX":
            value_type = _field(segment, 2).upper()
            raw = _field(segment, 5)
            identifier = encoding.unescape(_component(_field(segment, 3), encoding, 0)).strip()
            if value_type in CODED_TYPES:
                value = " ".join(encoding.unescape(_component(r, encoding, i)).strip()
                                 for r in raw.split(encoding.repetition) for i in (0, 1)).strip()
            else:
                value = "\n".join(encoding.unescape(r) for r in raw.split(encoding.repetition)).strip()
            observations.append(Observation(identifier, value_type, value, _field(segment, 8).upper()))
            if value_type in TEXT_TYPES and value:
                texts.append(value)
        elif segment[0] == "NTE":
            note = encoding.unescape(_field(segment, 3)).strip()
            if note:
                texts.append(note)
    sender = "^".join(part for part in (_component(_field(msh, 3), encoding, 0), _component(_field(msh, 4), encoding, 0))
                      if part)
    return ParsedReport(control_id=control_id, sender=sender, accessions=accessions, patient_id=patient_id,
                        study_date=study_date, status=_field(obr, 25).upper(), text="\n".join(texts),
                        observations=tuple(observations))


def control_id_of(message: str) -> str:
    """MSH-10 of a message we could not parse, for its AR (empty when even that cannot be read)."""
    first = re.split(r"\r\n|\r|\n", message.strip("\x0b\x1c\r\n "), maxsplit=1)[0]
    if len(first) < 4 or not first.startswith("MSH"):
        return ""
    parts = first.split(first[3])
    return parts[9][:20] if len(parts) > 9 else ""


def ack(control_id: str, code: str, text: str = "", receiving_application: str = "DICOM_AI") -> str:
    """An HL7 v2.5 ACK (ER7) with MSA-1 `code` for the message `control_id`; MSA-3 says why, briefly."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    clean = re.sub(r"[|^~\\&\r\n\x0b\x1c]", " ", text)[:MAX_ACK_TEXT]
    safe_id = re.sub(r"[|^~\\&\r\n\x0b\x1c]", "", control_id)[:20]
    return (f"MSH|^~\\&|{receiving_application}||||{now}||ACK^R01^ACK|A{safe_id}|P|2.5\r"
            f"MSA|{code}|{safe_id}|{clean}\r")


def _fields(segment: str, encoding: _Encoding) -> list[str]:
    parts = segment.split(encoding.field)
    if parts[0] == "MSH":  # MSH-1 is the separator itself: MSH-n is parts[n - 1]
        return ["MSH", encoding.field, *parts[1:]]
    return parts


def _field(segment: list[str], index: int) -> str:
    return segment[index] if len(segment) > index else ""


def _first(fields: list[list[str]], name: str) -> list[str] | None:
    return next((segment for segment in fields if segment[0] == name), None)


def _first_repetition(value: str, encoding: _Encoding) -> str:
    return value.split(encoding.repetition)[0]


def _component(value: str, encoding: _Encoding, index: int) -> str:
    parts = value.split(encoding.component)
    return parts[index] if len(parts) > index else ""


__all__ = ["ACCEPT", "ERROR", "REJECT", "MalformedMessage", "Observation", "ParsedReport", "ack", "control_id_of",
           "parse_report"]
