"""Fuzz targets: each takes one input (bytes) and either succeeds or raises the one error its code
documents; anything else (another exception, an invalid result) is a crash. Run by atheris
(tests/fuzz/run_atheris.py) and replayed on every committed crash input (tests/fuzz/crashes/).

- read_identity: the bytes a peer sent as a C-STORE dataset, in the transfer syntax chosen by the
  first byte, behind the File Meta header pynetdicom writes; the SCP must answer with a DICOM
  status (StoreRejected) or file an instance whose UIDs are safe path components.
- rules: the text of a rules file; the loader must return rules or raise RuleSetError whose every
  error names the file (and its line when the file parsed as YAML).
- hl7: patient, study and finding values taken from the bytes; the ORU^R01 must pass hl7apy's
  strict validation and keep MLLP framing intact, or the builder raises ValueError naming the value.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import atheris
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

TRANSFER_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
SOP_UID = "1.2.826.0.1.3680043.8.498.1"  # the request's Affected SOP Instance UID
KNOWN_MODELS = ("chest-xray-demo", "brain-mr-demo")
MLLP_FRAMING = ("\x0b", "\x1c")  # start and end block: inside a message they would cut it


class FuzzCrash(AssertionError):
    """The code under test broke its contract on this input."""


def _scratch() -> Path:
    folder = Path(tempfile.gettempdir()) / "dicom-ai-fuzz"
    folder.mkdir(exist_ok=True)
    return folder


def received_file(data: bytes, path: Path) -> str:
    """Write `data` as pynetdicom stores a received dataset; returns the transfer syntax UID."""
    syntax = TRANSFER_SYNTAXES[data[0] % len(TRANSFER_SYNTAXES)] if data else ImplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = SOP_UID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.3811.2"
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    buffer.write(data[1:])
    path.write_bytes(buffer.getvalue())
    return str(syntax)


def read_identity_target(data: bytes) -> None:
    from dicom_ai.receive.keep import StoreRejected, read_identity
    from dicom_ai.dicom_values import is_safe_uid

    path = _scratch() / "received.dcm"
    syntax = received_file(data, path)
    try:
        identity = read_identity(path, SOP_UID, "FUZZ", syntax)
    except StoreRejected as exc:
        if not str(exc) or not 0 < exc.status_code <= 0xFFFF:
            raise FuzzCrash(f"refusal without a message or DIMSE status: {exc!r}") from exc
        return
    for uid in (identity.study_instance_uid, identity.series_instance_uid, identity.sop_instance_uid):
        if not is_safe_uid(uid):
            raise FuzzCrash(f"filed an instance with the unsafe UID {uid!r}")
    for text in (identity.patient_id, identity.patient_name, identity.accession_number, identity.modality,
                 identity.study_date, identity.study_description, identity.sop_class_uid):
        if not isinstance(text, str):
            raise FuzzCrash(f"identity holds {type(text).__name__}, not text: {text!r}")


def rules_target(data: bytes) -> None:
    from dicom_ai.route.loader import RuleSetError, load_ruleset

    folder = _scratch() / "rules"
    folder.mkdir(exist_ok=True)
    path = folder / "fuzz.yaml"
    path.write_bytes(data)
    try:
        load_ruleset(folder, known_models=KNOWN_MODELS)
    except RuleSetError as exc:
        if not exc.errors:
            raise FuzzCrash("RuleSetError without errors") from exc
        for error in exc.errors:
            text = str(error)
            if error.path != path or not text.startswith(str(path)) or "\n" in text:
                raise FuzzCrash(f"an error that does not name the file on one line: {text!r}") from exc
            file_level = error.problem.startswith(("not UTF-8 text", "cannot read the file"))
            if error.line is None and not file_level:
                raise FuzzCrash(f"an error without its line: {text!r}") from exc


def hl7_target(data: bytes) -> None:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    from dicom_ai.domain import Code, Finding, ModelInfo, Priority, PriorityDecision
    from dicom_ai.send.carriers.hl7 import oru_message

    fdp = atheris.FuzzedDataProvider(data)
    header = Dataset()
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID"):
        if fdp.ConsumeBool():
            setattr(header, keyword, fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80)))
    label = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)) or "Finding"
    code = Code(fdp.ConsumeUnicodeNoSurrogates(12) or "1", "SCT" if fdp.ConsumeBool() else "99LOCAL",
                fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300)) or "meaning")
    findings = [Finding(label, code, fdp.ConsumeProbability(), 0.5) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    reasons = tuple(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 120)) for _ in range(fdp.ConsumeIntInRange(0, 3)))
    level = Priority(fdp.ConsumeIntInRange(min(p.value for p in Priority), max(p.value for p in Priority)))
    model = ModelInfo(fdp.ConsumeUnicodeNoSurrogates(20) or "m", "1.0", "2.25.1", "dicom-ai", "demo",
                      fdp.ConsumeBool(), "demo")
    application = fdp.ConsumeUnicodeNoSurrogates(20) or "RIS"
    try:
        text = oru_message(header, PriorityDecision(level, 0.5, reasons), findings, [model], application, "")
    except ValueError as exc:
        if not str(exc):
            raise FuzzCrash(f"a refusal that names nothing: {exc!r}") from exc
        return
    if any(mark in text for mark in MLLP_FRAMING):
        raise FuzzCrash(f"an MLLP framing character inside the message: {text!r}")
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    if not message.validate():
        raise FuzzCrash(f"an invalid message: {text!r}")


TARGETS = {"read_identity": read_identity_target, "rules": rules_target, "hl7": hl7_target}
