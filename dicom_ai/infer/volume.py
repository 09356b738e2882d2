"""Stack a series' slices into a volume, in anatomical order, for 3-D models.

Order comes from each slice's position along the slice normal (Image Position / Orientation
Patient); Instance Number is the fallback when the geometry is missing. A series whose slices
differ in size, or which holds multi-frame or colour images, is refused with a message naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from dicom_ai.domain import Instance
from dicom_ai.infer.pixels import PixelError, modality_values

log = logging.getLogger(__name__)

MIN_SLICES = 2


@dataclass(frozen=True, eq=False)
class Volume:
    """Slices in order: `values` is float32 (slices, rows, columns); `instances[i]` is slice i."""

    values: np.ndarray
    instances: tuple[Instance, ...]


def read_volume(instances: Sequence[Instance]) -> Volume:
    """Read, order and stack the slices of one series."""
    if len(instances) < MIN_SLICES:
        raise PixelError(f"series {instances[0].series_instance_uid if instances else '?'}: "
                         f"{len(instances)} slice(s); a volume model needs at least {MIN_SLICES}")
    slices = []
    for instance in instances:
        try:
            ds = pydicom.dcmread(instance.path)
        except (OSError, InvalidDicomError) as exc:
            raise PixelError(f"file {instance.path}: cannot read it as DICOM: {exc}") from exc
        slices.append((_position(ds), instance, modality_values(ds)))
    slices.sort(key=lambda item: item[0])
    shapes = {values.shape for _, _, values in slices}
    if len(shapes) > 1:
        raise PixelError(f"series {instances[0].series_instance_uid}: slices differ in size {sorted(shapes)}; cannot stack a volume")
    return Volume(values=np.stack([values for _, _, values in slices]), instances=tuple(i for _, i, _ in slices))


def _position(ds: pydicom.Dataset) -> tuple[float, int]:
    """Distance along the slice normal (then Instance Number) for sorting."""
    number = int(ds.get("InstanceNumber") or 0)
    position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
        return float(number), number
    row, column = np.array(orientation[:3], dtype=float), np.array(orientation[3:], dtype=float)
    return float(np.dot(np.cross(row, column), np.array(position, dtype=float))), number
