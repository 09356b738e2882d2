"""An assessment of an AI result, as a DICOM SR that references the AI's SR: the judgement goes to the archive.

In the spirit of IHE's AI Result Assessment (AIRA) profile: a Comprehensive SR in the study of the
AI result, whose content says, per finding the AI reported, what the assessor reads (Present,
Absent or Equivocal, SNOMED CT), whether that agrees with the AI, who assessed it (a person
observer: the radiologist; a device observer: dicom-ai reading the final report) and any comment.
The AI SR is referenced twice: as a COMPOSITE content item (DCM 128225 "Source report") and in the
Current Requested Procedure Evidence Sequence. DCM and SCT codes are used where they exist; the few
private ones (coding scheme 99DICOMAI) are listed in docs/validation.md and described in the
Coding Scheme Identification Sequence. A revised judgement makes a new SR that names the previous
one in its Predecessor Documents Sequence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicom_ai.domain import Code, Truth, TruthSource
from dicom_ai.encode.charset import ensure_character_set
from dicom_ai.encode.sr import coded
from dicom_ai.encode.uids import ASSESSMENT_INSTANCE, ASSESSMENT_SERIES, assessment_uid

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ASSESSMENT_SERIES_NUMBER = 9902  # after the AI's results (9901)
PRIVATE_SCHEME = "99DICOMAI"
PRIVATE_SCHEME_NAME = "dicom-ai validation loop codes"
MANUFACTURER = "dicom-ai"
# Standard codes.
SOURCE_REPORT = hd.sr.CodedConcept("128225", "DCM", "Source report")  # the assessed AI SR
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
MEASUREMENT_GROUP = hd.sr.CodedConcept("125007", "DCM", "Measurement Group")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
TRUTH_VALUES = {
    Truth.PRESENT: hd.sr.CodedConcept("52101004", "SCT", "Present"),
    Truth.ABSENT: hd.sr.CodedConcept("2667000", "SCT", "Absent"),
    Truth.UNCERTAIN: hd.sr.CodedConcept("42425007", "SCT", "Equivocal"),
}
# Private codes (no DCM or SCT concept says these; documented in docs/validation.md).
AI_RESULT_ASSESSMENT = hd.sr.CodedConcept("AIRA-ASSESSMENT", PRIVATE_SCHEME, "AI Result Assessment")
AGREEMENT = hd.sr.CodedConcept("AIRA-AGREEMENT", PRIVATE_SCHEME, "Agreement with AI result")
AGREES = hd.sr.CodedConcept("AIRA-AGREE", PRIVATE_SCHEME, "Agrees with AI result")
DISAGREES = hd.sr.CodedConcept("AIRA-DISAGREE", PRIVATE_SCHEME, "Disagrees with AI result")
NOT_ASSESSABLE = hd.sr.CodedConcept("AIRA-UNDECIDED", PRIVATE_SCHEME, "Agreement not assessable")
SOURCE = hd.sr.CodedConcept("AIRA-SOURCE", PRIVATE_SCHEME, "Source of assessment")
SOURCES = {
    TruthSource.RADIOLOGIST: hd.sr.CodedConcept("AIRA-RADIOLOGIST", PRIVATE_SCHEME, "Radiologist judgement"),
    TruthSource.REPORT: hd.sr.CodedConcept("AIRA-REPORT", PRIVATE_SCHEME, "Derived from final report"),
}
TEXT_MAX = 1024  # our TEXT values (UT allows more; viewers show less)


@dataclass(frozen=True)
class LabelAssessment:
    """One finding of the AI SR as assessed: the truth, whether the AI called it, by whom and why."""

    label: str
    code: Code
    truth: Truth
    source: TruthSource
    by: str
    ai_present: bool
    ai_probability: float
    comment: str = ""

    @property
    def agreement(self) -> hd.sr.CodedConcept:
        if self.truth == Truth.UNCERTAIN:
            return NOT_ASSESSABLE
        return AGREES if (self.truth == Truth.PRESENT) == self.ai_present else DISAGREES


def content_digest(assessments: Sequence[LabelAssessment]) -> str:
    """What the assessment says, as a short digest: the same judgements give the same SR UID."""
    said = sorted((a.label, a.truth.value, a.source.value, a.by, a.comment) for a in assessments)
    return hashlib.sha256(json.dumps(said).encode()).hexdigest()[:32]


def build_assessment_sr(
    assessed: Dataset,
    assessments: Sequence[LabelAssessment],
    *,
    model_name: str,
    previous: Dataset | None = None,
    node_device_uid: str,
) -> Dataset:
    """The assessment SR of the AI SR `assessed` (its header: patient, study and SOP identity suffice).

    `previous` is the assessment this one revises (its identity suffices); `node_device_uid` is the
    device observer for judgements derived from a report.
    """
    if not assessments:
        raise ValueError("an assessment SR needs at least one assessed finding")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not assessed.get(keyword):
            raise ValueError(f"the assessed SR has no {keyword}")
    study_uid, assessed_uid = str(assessed.StudyInstanceUID), str(assessed.SOPInstanceUID)
    root = hd.sr.ContainerContentItem(name=AI_RESULT_ASSESSMENT, is_content_continuous=False)
    items: list[hd.sr.ContentItem] = [
        hd.sr.CompositeContentItem(name=SOURCE_REPORT, referenced_sop_class_uid=str(assessed.SOPClassUID),
                                   referenced_sop_instance_uid=assessed_uid,
                                   relationship_type=hd.sr.RelationshipTypeValues.CONTAINS),
    ]
    items.extend(_group(a, node_device_uid) for a in sorted(assessments, key=lambda a: a.label))
    root.ContentSequence = hd.sr.ContentSequence(items)
    digest = content_digest(assessments)
    sr = hd.sr.ComprehensiveSR(
        evidence=[assessed],
        content=root,
        series_instance_uid=assessment_uid(ASSESSMENT_SERIES, study_uid, assessed_uid),
        series_number=ASSESSMENT_SERIES_NUMBER,
        sop_instance_uid=assessment_uid(ASSESSMENT_INSTANCE, study_uid, assessed_uid, digest),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=False,
        series_description=f"AI assessment {model_name}"[:64],
        previous_versions=[previous] if previous is not None else None,
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = PRIVATE_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    ensure_character_set(sr)
    return sr


def _group(assessment: LabelAssessment, node_device_uid: str) -> hd.sr.ContainerContentItem:
    """One finding: observer, the finding, the assessor's reading of it, agreement, source and comment."""
    group = hd.sr.ContainerContentItem(name=MEASUREMENT_GROUP, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    finding = coded(assessment.code)
    items: list[hd.sr.ContentItem] = [item for item in _observer(assessment, node_device_uid)]
    items += [
        hd.sr.CodeContentItem(name=FINDING, value=finding, relationship_type=contains),
        hd.sr.CodeContentItem(name=finding, value=TRUTH_VALUES[assessment.truth], relationship_type=contains),
        hd.sr.CodeContentItem(name=AGREEMENT, value=assessment.agreement, relationship_type=contains),
        hd.sr.CodeContentItem(name=SOURCE, value=SOURCES[assessment.source], relationship_type=contains),
    ]
    called = "present" if assessment.ai_present else "absent"
    text = f"AI: {assessment.label} {called} ({assessment.ai_probability:.0%}); assessed {assessment.truth}"
    if assessment.comment:
        text += f": {assessment.comment}"
    items.append(hd.sr.TextContentItem(name=COMMENT, value=text[:TEXT_MAX], relationship_type=contains))
    group.ContentSequence = hd.sr.ContentSequence(items)
    return group


def _observer(assessment: LabelAssessment, node_device_uid: str) -> hd.sr.ObservationContext:
    """TID 1002: the radiologist as a person observer, or dicom-ai (reading the report) as a device observer."""
    if assessment.source == TruthSource.RADIOLOGIST:
        person = hd.sr.PersonObserverIdentifyingAttributes(name=_person_name(assessment.by),
                                                           login_name=assessment.by[:64] or None)
        return hd.sr.ObservationContext(observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Person, observer_identifying_attributes=person))
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=node_device_uid, name="dicom-ai report reader",
                                                      manufacturer_name=MANUFACTURER)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _person_name(by: str) -> str:
    """A login or a name as a DICOM PN value (no backslash, at most 64 characters per group); a single
    word gets a trailing caret, so it reads as a family name rather than the retired one-part form."""
    name = (by.replace("\\", " ").strip() or "unknown")[:63]
    return name if "^" in name else name + "^"


def assessment_reference(sop_instance_uid: str, series_instance_uid: str, study_instance_uid: str) -> Dataset:
    """The identity of an earlier assessment SR, for the Predecessor Documents Sequence of its revision."""
    reference = Dataset()
    reference.SOPClassUID = COMPREHENSIVE_SR
    reference.SOPInstanceUID = sop_instance_uid
    reference.SeriesInstanceUID = series_instance_uid
    reference.StudyInstanceUID = study_instance_uid
    return reference
