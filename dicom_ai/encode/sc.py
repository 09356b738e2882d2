"""An RGB Secondary Capture per analysed image: the heatmap over the image, with a caption band.

Built with highdicom's SCImage.from_ref_dataset so patient and study come from the source image.
Window/rescale attributes are not copied (viewers render an RGB image with them black), the
pixels stay uncompressed, and BodyPartExamined/Laterality come along (dciodvfy wants them).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_ai.encode.caption import CaptionLine, band_height, burn_caption, caption_lines
from dicom_ai.encode.charset import ensure_character_set
from dicom_ai.encode.overlay import blend, check_inputs, resize

if TYPE_CHECKING:
    from dicom_ai.domain import ImageResult, ModelInfo, PriorityDecision

log = logging.getLogger(__name__)

SC_SERIES_NUMBER = 9902  # high, so results sort after the acquired series
MAX_SIDE = 2048  # long side of the whole picture, caption band included
MIN_WIDTH = 512  # small images (CT, MR slices) are enlarged so the caption stays readable
# Purpose of Reference for Source Image Sequence: DCM 121322 "Source image for image processing operation".
SOURCE_FOR_PROCESSING = codes.DCM.SourceImageForImageProcessingOperation
BURNED_IN_YES = "YES"
# Letters of PatientOrientation along +x, +y, +z of the patient coordinate system (and the reverse).
AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
# highdicom warns about single-component names such as a Referring Physician's Name "ward" copied
# from the source: that is the source's data, not ours to fix, and the warning would fire per image.
SOURCE_PERSON_NAME_WARNING = r".*unlikely to represent the intended person name.*"
DERIVATION = "Model heatmap blended over the displayed image; caption with findings burned in"


def picture_size(rows: int, columns: int, lines: Sequence[CaptionLine]) -> tuple[int, int]:
    """Image size (rows, columns) to draw at, so image + caption band fit MAX_SIDE and text is legible."""
    scale = max(1.0, MIN_WIDTH / columns)
    scale = min(scale, MAX_SIDE / max(rows, columns))
    for _ in range(3):  # the band depends on the width, the width on the scale: settle in a few steps
        width = max(1, round(columns * scale))
        height = max(1, round(rows * scale))
        band = band_height(width, lines)
        if height + band <= MAX_SIDE:
            return height, width
        scale = (MAX_SIDE - band) / rows
    return max(1, math.floor(rows * scale)), max(1, math.floor(columns * scale))


BIPED_LETTERS = frozenset("APRLHF")
# Body Part Examined values of paired structures (PS3.16 CID 4031 subset), for which Laterality is required.
PAIRED_BODY_PARTS = frozenset({"BREAST", "EYE", "EAR", "KIDNEY", "LUNG", "HAND", "FOOT", "KNEE", "HIP", "SHOULDER",
                               "ELBOW", "WRIST", "ANKLE", "ARM", "LEG", "FEMUR", "HUMERUS", "CLAVICLE"})


def orientation_letters(direction: Sequence[float]) -> str:
    """PatientOrientation letters for one direction cosine vector, strongest axis first (e.g. 'LP')."""
    order = sorted(range(3), key=lambda axis: -abs(direction[axis]))
    letters = [AXIS_LETTERS[axis][0 if direction[axis] > 0 else 1] for axis in order if abs(direction[axis]) > 1e-3]
    return "".join(letters[:2]) or "L"


def source_laterality(source: Dataset) -> str | None:
    """The side of the analysed image: series Laterality, else Image Laterality (mammograms), if L or R."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword) or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


def patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's PatientOrientation, or one derived from ImageOrientationPatient, or None.

    Reduced to the dominant letter of each direction (e.g. mammography's 'FL' -> 'F'): letters
    are listed most significant first, and highdicom's SC accepts single letters only.
    """
    value = source.get("PatientOrientation")
    if value and len(value) == 2 and all(value):
        row, column = str(value[0]).strip().upper(), str(value[1]).strip().upper()
    else:
        cosines = source.get("ImageOrientationPatient")
        if not (cosines and len(cosines) == 6):
            return None
        numbers = [float(c) for c in cosines]
        row, column = orientation_letters(numbers[:3]), orientation_letters(numbers[3:])
    if row[:1] not in BIPED_LETTERS or column[:1] not in BIPED_LETTERS:
        return None
    return row[0], column[0]


def copy_anatomy(image: Dataset, source: Dataset) -> None:
    """Body Part Examined from the source, and Laterality as dciodvfy wants it in a derived image's series.

    Laterality is Type 2C, required for paired body parts (and absent otherwise): when the body part
    is paired or unknown and the source names no side, it is sent empty ("unknown").
    """
    body_part = str(source.get("BodyPartExamined") or "").strip()
    if body_part:
        image.BodyPartExamined = body_part
    if "Laterality" not in image and (not body_part or body_part.upper() in PAIRED_BODY_PARTS):
        image.Laterality = None


def picture(result: ImageResult, model: ModelInfo, priority: PriorityDecision) -> np.ndarray:
    """The RGB pixels of the Secondary Capture: heatmap over the display image, caption band below."""
    where = f"SOPInstanceUID {result.source.sop_instance_uid}"
    if result.heatmap is None:
        raise ValueError(f"{where}: no heatmap, so no Secondary Capture can be drawn")
    try:
        check_inputs(result.display, result.heatmap)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    lines = caption_lines(result.findings, model, priority)
    rows, columns = picture_size(result.display.shape[0], result.display.shape[1], lines)
    if (rows, columns) != result.display.shape[:2]:
        log.debug("%s: drawing the heatmap at %dx%d instead of %s", where, rows, columns, result.display.shape)
    display = resize(result.display, rows, columns)
    heatmap = np.clip(resize(result.heatmap.astype(np.float32), rows, columns), 0.0, 1.0)
    return burn_caption(blend(display, heatmap), lines)


def build_secondary_capture(
    result: ImageResult,
    source: Dataset,
    model: ModelInfo,
    priority: PriorityDecision,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_description: str,
    equipment: hd.ContributingEquipment,
) -> hd.sc.SCImage:
    """One RGB Secondary Capture (uncompressed, BurnedInAnnotation YES) in the source image's study."""
    pixels = picture(result, model, priority)
    orientation = patient_orientation(source)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SOURCE_PERSON_NAME_WARNING, category=UserWarning)
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_instance_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=model.manufacturer,
            laterality=source_laterality(source),
            patient_orientation=orientation or ("L", "P"),  # placeholder, emptied below (Type 2)
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=[equipment],
            series_description=series_description,
            manufacturer_model_name=model.name,
            software_versions=model.version,
        )
    if orientation is None:
        setattr(image, "PatientOrientation", None)  # Type 2: present and empty
    copy_anatomy(image, source)
    image.DeviceUID = model.device_uid
    image.BurnedInAnnotation = BURNED_IN_YES
    image.DerivationDescription = DERIVATION
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(SOURCE_FOR_PROCESSING)]
    image.SourceImageSequence = [reference]
    ensure_character_set(image)
    return image
