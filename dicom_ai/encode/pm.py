"""The heatmap as a DICOM Parametric Map, on the source image's own pixel grid, for viewers that overlay it.

The Secondary Capture is a picture: every viewer shows it, none can lay it over the original or
read its values. The Parametric Map holds the heatmap itself, real values 0-1 (32-bit float
pixel data, an identity Real World Value Mapping), Rows x Columns of the analysed image, in its
Frame of Reference at its plane position, so a viewer can fuse it with the image.

One map per source series, a frame per image of the series (zeros on images without a heatmap,
such as a volume's less salient slices). The Parametric Map IOD requires a Frame of Reference and
plane geometry: images without them (CR, DX, most photos) get their SC only, as do multi-frame
images (the map would have to single out the analysed frame's geometry).

No Palette Color LUT: DICOM pairs one (Pixel Presentation COLOR_RANGE) with integer pixel data
only, and dciodvfy (dicom3tools 2022) rejects the palette attributes in a Parametric Map even then;
viewers colour a fused map with their own colour maps. See docs/viewers.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom import Dataset

from dicom_ai.encode.charset import ensure_character_set
from dicom_ai.encode.overlay import resize
from dicom_ai.encode.sc import copy_anatomy, source_laterality

if TYPE_CHECKING:
    from dicom_ai.domain import ImageResult, ModelInfo

log = logging.getLogger(__name__)

PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
PM_SERIES_NUMBER = 9903  # after the SR (9901) and the heatmap SCs (9902)
# The stored values are the real values: a heatmap's relative weight, 0 to 1, without unit.
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
LUT_LABEL = "AI_HEATMAP"  # SH
LUT_EXPLANATION = "Model saliency, 0 (none) to 1 (strongest); not a probability"
CONTENT_LABEL = "AI_HEATMAP"  # CS
FULL_RANGE = hd.VOILUTTransformation(window_center=0.5, window_width=1.0)


def unmappable(series: Sequence[Dataset]) -> str | None:
    """Why no Parametric Map can be aligned with this series' images, or None when one can."""
    for source in series:
        frames = int(source.get("NumberOfFrames") or 1)
        if frames > 1:
            return f"image {source.SOPInstanceUID} has {frames} frames"
        if not source.get("FrameOfReferenceUID"):
            return f"image {source.SOPInstanceUID} has no Frame of Reference"
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            value = source.get(keyword)
            if not value or (keyword == "PixelSpacing" and not all(float(v) > 0 for v in value)):
                return f"image {source.SOPInstanceUID} has no usable {keyword}"
    for keyword in ("FrameOfReferenceUID", "Rows", "Columns", "ImageOrientationPatient"):
        if len({str(source.get(keyword)) for source in series}) > 1:
            return f"its images differ in {keyword}"
    positions = [tuple(round(float(v), 3) for v in source.ImagePositionPatient) for source in series]
    if len(set(positions)) < len(positions):
        return "two of its images lie at one position (one frame each would overlap)"
    return None


def heatmap_values(result: ImageResult | None, rows: int, columns: int) -> np.ndarray:
    """A heatmap as float32 0-1 on the source image's Rows x Columns; zeros for an image without one."""
    if result is None or result.heatmap is None:
        return np.zeros((rows, columns), np.float32)
    values = resize(result.heatmap.astype(np.float32), rows, columns)
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def build_parametric_map(
    results: Mapping[str, ImageResult],
    series: Sequence[Dataset],
    model: ModelInfo,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_description: str,
    equipment: hd.ContributingEquipment,
) -> hd.pm.ParametricMap:
    """One Parametric Map for one source series: a frame per image of `series` (in that order), each the
    heatmap of its result in `results` (keyed by SOP Instance UID), or zeros where an image has none
    (a volume's slices other than its most salient ones).

    One frame per image of the series, because that is what OHIF v3.13 loads: it places each frame in
    an array the size of the map at the index its image has in the series (see docs/viewers.md).
    """
    problem = unmappable(series)
    if problem:
        raise ValueError(f"series {series[0].SeriesInstanceUID}: no Parametric Map can be aligned with it: {problem}")
    rows, columns = int(series[0].Rows), int(series[0].Columns)
    findings = [f for r in results.values() for f in r.findings]
    lead = max(findings, key=lambda f: f.probability)
    frames = np.stack([heatmap_values(results.get(str(s.SOPInstanceUID)), rows, columns) for s in series])
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABEL, lut_explanation=LUT_EXPLANATION, unit=NO_UNITS, value_range=(0.0, 1.0),
        slope=1.0, intercept=0.0,
    )
    quality = hd.ContentQualificationValues.RESEARCH if model.not_for_clinical_use else \
        hd.ContentQualificationValues.PRODUCT
    pm = hd.pm.ParametricMap(
        source_images=list(series),
        pixel_array=frames,
        series_instance_uid=series_instance_uid,
        series_number=PM_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=model.manufacturer,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        device_serial_number=model.device_uid,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[FULL_RANGE],
        content_label=CONTENT_LABEL,
        content_description=f"{model.name} heatmap, {lead.label}"[:64],
        content_qualification=quality,
        derived_pixel_contrast=hd.pm.DerivedPixelContrastValues.NONE,
        contributing_equipment=[equipment],
        series_description=series_description,
    )
    laterality = source_laterality(series[0])
    if laterality and "Laterality" not in pm:
        pm.Laterality = laterality
    copy_anatomy(pm, series[0])
    pm.DeviceUID = model.device_uid
    ensure_character_set(pm)
    return pm
