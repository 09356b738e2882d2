"""A Comprehensive 3D SR holding a TID 1500 Measurement Report of the model's findings.

One measurement group (TID 1501) per analysed image: tracking identifier and UID (OHIF needs
both), finding type, TID 4019 algorithm identification, for every label a qualitative
evaluation (Present/Absent) and the probability as a numeric measurement, and the source image.
The observer is the model as a DEVICE (TID 1004), so nobody mistakes it for a person's report.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from highdicom._standard_utils import get_sop_class_iod_map
from pydicom.sr.codedict import codes

from dicom_ai.encode.charset import ensure_character_set
from dicom_ai.encode.source import patient_and_study

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicom_ai.domain import Code, Finding, ImageResult, ModelInfo

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901  # high, so results sort after the acquired series
SR_INSTANCE_NUMBER = 1
# Qualitative evaluation values (SNOMED CT).
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
# The probability is reported in UCUM percent, as viewers show it: "Consolidation 93 %".
PERCENT = hd.sr.CodedConcept("%", "UCUM", "Percent")
# The one-line text OHIF shows above a region's numbers.
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
# Procedure Reported when the study carries no Procedure Code Sequence, by source Modality.
PROCEDURE_BY_MODALITY: dict[str, hd.sr.CodedConcept] = {
    "CR": hd.sr.CodedConcept("363680008", "SCT", "Radiographic imaging procedure"),
    "DX": hd.sr.CodedConcept("363680008", "SCT", "Radiographic imaging procedure"),
    "CT": hd.sr.CodedConcept("77477000", "SCT", "Computerized axial tomography"),
    "MR": hd.sr.CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
}
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging")
# The region drawn for a positive image: the heatmap above this fraction of its maximum.
REGION_LEVEL = 0.5


def analysed_frame(source: Dataset) -> int | None:
    """The frame number the models analyse in a multi-frame image (its middle one, as infer/pixels.py
    reads it), or None for a single-frame image."""
    frames = int(source.get("NumberOfFrames") or 1)
    return frames // 2 + 1 if frames > 1 else None


def region_box(heatmap: np.ndarray | None, *, rows: int, columns: int) -> np.ndarray:
    """A closed POLYLINE (5 column/row points, DICOM pixel coordinates with 0,0 the top left corner of the
    image) around the heatmap's region above half its maximum, scaled to a `rows` x `columns` image.

    Without a heatmap, or with one that is zero everywhere, the box is the whole image: the
    probability concerns the image as a whole and there is no place to point at.
    """
    if heatmap is None or not np.any(heatmap > 0):
        left, top, right, bottom = 0.0, 0.0, float(columns), float(rows)
    else:
        hot_rows, hot_columns = np.nonzero(heatmap >= REGION_LEVEL * float(heatmap.max()))
        scale_row, scale_column = rows / heatmap.shape[0], columns / heatmap.shape[1]
        top, bottom = hot_rows.min() * scale_row, (hot_rows.max() + 1) * scale_row
        left, right = hot_columns.min() * scale_column, (hot_columns.max() + 1) * scale_column
    return np.array([[left, top], [right, top], [right, bottom], [left, bottom], [left, top]], dtype=np.float32)


def heatmap_peak(heatmap: np.ndarray, *, rows: int, columns: int) -> np.ndarray:
    """The centre of the heatmap's hottest pixel as one column/row POINT of a `rows` x `columns` image."""
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return np.array([[(column + 0.5) * columns / heatmap.shape[1], (row + 0.5) * rows / heatmap.shape[0]]],
                    dtype=np.float32)


def image_region(result: ImageResult, rows: int, columns: int) -> tuple[hd.sr.GraphicTypeValues, np.ndarray]:
    """Where a group's region lies on its image (column/row pixel coordinates), for a viewer to draw.

    A positive image: a box around the heatmap's hot region. A negative image with a heatmap: a
    POINT at the heatmap's peak (OHIF draws an arrow with the label beside it, inside the image).
    No heatmap: the whole image, as nothing says where (OHIF then puts the label right of the image).
    """
    heatmap = result.heatmap
    if heatmap is not None and np.any(heatmap > 0):
        if any(f.present for f in result.findings):
            return hd.sr.GraphicTypeValues.POLYLINE, region_box(heatmap, rows=rows, columns=columns)
        return hd.sr.GraphicTypeValues.POINT, heatmap_peak(heatmap, rows=rows, columns=columns)
    return hd.sr.GraphicTypeValues.POLYLINE, region_box(None, rows=rows, columns=columns)


def coded(code: Code) -> hd.sr.CodedConcept:
    """A domain Code as a highdicom CodedConcept."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def procedure_reported(source: Dataset) -> hd.sr.CodedConcept:
    """The study's own procedure code when it has one, else a generic imaging procedure by modality."""
    for item in source.get("ProcedureCodeSequence") or []:
        if item.get("CodeValue") and item.get("CodingSchemeDesignator") and item.get("CodeMeaning"):
            return hd.sr.CodedConcept(
                value=str(item.CodeValue), scheme_designator=str(item.CodingSchemeDesignator),
                meaning=str(item.CodeMeaning),
            )
    return PROCEDURE_BY_MODALITY.get(str(source.get("Modality", "")).upper(), IMAGING_PROCEDURE)


def observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    """TID 1002 with a device observer (TID 1004) that is the model."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=model.device_uid,
        name=model.display_name,
        manufacturer_name=model.manufacturer,
        model_name=f"{model.name} {model.version}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def leading_finding(findings: Sequence[Finding]) -> Finding:
    """The finding that names a group: the most probable positive one, else the most probable one."""
    return sorted(findings, key=lambda f: (not f.present, -f.probability, f.label))[0]


def comment(lead: Finding, model: ModelInfo) -> str:
    """One line for the viewer's label, e.g. 'Consolidation present - AI 93 % (demo)'."""
    state = "present" if lead.present else "absent"
    demo = " (demo)" if model.not_for_clinical_use else ""
    return f"{lead.label} {state} - AI {round(lead.probability * 100):d} %{demo}"


def image_size(result: ImageResult, source: Dataset) -> tuple[int, int]:
    """Rows and Columns of the source image, which the region's pixel coordinates refer to."""
    rows, columns = source.get("Rows"), source.get("Columns")
    if rows and columns:
        return int(rows), int(columns)
    log.warning("SOPInstanceUID %s has no Rows/Columns in its header; the region uses the analysed image's %s",
                result.source.sop_instance_uid, result.display.shape[:2])
    return int(result.display.shape[0]), int(result.display.shape[1])


def measurement_group(
    result: ImageResult,
    source: Dataset,
    model: ModelInfo,
    *,
    tracking_uid: str,
    image_number: int,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one image, shaped so OHIF v3 draws it: a region on the image labelled with the findings.

    Tracking identifier and UID, finding type (the leading finding), TID 4019 algorithm, the source
    image, one probability NUM per label (leading finding first) INFERRED FROM one SCOORD
    SELECTED FROM the image (see image_region), the Present/Absent evaluations, and a TEXT Comment.
    No group is ever without a region: OHIF's viewport fails on one.
    """
    where = f"SOPInstanceUID {result.source.sop_instance_uid}"
    if not result.findings:
        raise ValueError(f"{where}: the model reported no findings, so there is nothing to put in the SR")
    labels = [f.label for f in result.findings]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{where}: a label is reported twice on one image: {labels}")
    lead = leading_finding(result.findings)
    ordered = sorted(result.findings, key=lambda f: (f is not lead, -f.probability, f.label))
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"threshold {f.label}={f.threshold:g}" for f in result.findings],
        manufacturer=model.manufacturer,
    )
    graphic_type, points = image_region(result, *image_size(result, source))
    frame = analysed_frame(source)

    def region() -> hd.sr.CoordinatesForMeasurement:
        return hd.sr.CoordinatesForMeasurement(
            graphic_type=graphic_type,
            graphic_data=points,
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
                referenced_frame_numbers=[frame] if frame else None,
            ),
        )

    # A colon would let OHIF read "<tag>:<tool>" as one of its own editable tools.
    identifier = f"{lead.label} ({model.name}, image {image_number})".replace(":", " ")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=identifier),
        finding_type=coded(lead.code),
        algorithm_id=algorithm,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=coded(f.code), value=PRESENT if f.present else ABSENT)
            for f in result.findings
        ],
        measurements=[
            hd.sr.Measurement(name=coded(f.code), value=round(f.probability * 100.0, 2), unit=PERCENT,
                              referenced_coordinates=[region()])
            for f in ordered
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
                referenced_frame_numbers=[frame] if frame else None,
            )
        ],
    )
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=COMMENT, value=comment(lead, model), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    ))
    return group


class MeasurementReportSR(hd.sr.Comprehensive3DSR):
    """highdicom's Comprehensive 3D SR, also for sources whose SOP class highdicom does not know.

    highdicom copies the source's Patient and Study modules by looking its SOP class up in its
    table of IODs: a retired or private SOP class (an old ultrasound, a vendor's own radiograph
    storage) raises KeyError there. Those sources get the attributes of the Patient and Study
    modules every image IOD shares instead.
    """

    def copy_patient_and_study_information(self, dataset: Dataset) -> None:
        if str(dataset.SOPClassUID) in get_sop_class_iod_map():
            super().copy_patient_and_study_information(dataset)
            return
        log.info("SOP class %s of %s is not a standard one highdicom knows: copying the common Patient and "
                 "Study attributes", dataset.SOPClassUID, dataset.SOPInstanceUID)
        for keyword in patient_and_study():
            if keyword in dataset:
                self.add(copy.deepcopy(dataset[keyword]))


def build_sr(
    results: Sequence[ImageResult],
    sources: Mapping[str, Dataset],
    model: ModelInfo,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    tracking_uids: Mapping[str, str],
    series_description: str,
    equipment: hd.ContributingEquipment,
    predecessors: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report for one model on one study, with the analysed images as evidence.

    `results` come in the order of their measurement groups; `sources` and `tracking_uids` are
    keyed by source SOP Instance UID; `predecessors` (SOP Class, Study, Series and SOP Instance
    UIDs suffice) are the earlier versions this report supersedes.
    """
    if not results:
        raise ValueError("build_sr needs at least one image result")
    evidence = [sources[r.source.sop_instance_uid] for r in results]
    groups = [
        measurement_group(
            result,
            sources[result.source.sop_instance_uid],
            model,
            tracking_uid=tracking_uids[result.source.sop_instance_uid],
            image_number=number,
        )
        for number, result in enumerate(results, start=1)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(model),
        procedure_reported=procedure_reported(evidence[0]),
        imaging_measurements=groups,
    )
    sr = MeasurementReportSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=SR_INSTANCE_NUMBER,
        manufacturer=model.manufacturer,
        is_complete=True,
        is_final=False,  # an algorithm's output nobody has verified yet
        is_verified=False,
        series_description=series_description,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        contributing_equipment=[equipment],
        previous_versions=list(predecessors) or None,  # earlier SRs this one supersedes
    )
    sr.DeviceUID = model.device_uid  # General Equipment: the model made this object
    ensure_character_set(sr)
    return sr
