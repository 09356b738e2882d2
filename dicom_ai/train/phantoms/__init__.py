"""phantoms: synthetic images with known findings, for reproducible demo models and tests.

One module per kind, each drawing from a `numpy.random.Generator` (a seed gives the same image):
`chest` (frontal radiograph, consolidation), `mammography` (spiculated mass), `brain_mr`
(axial T2/FLAIR slice, mass with oedema), `ct_volume` (non-contrast head CT, haemorrhage) and
`endoscopy` (colonoscopy frame, polyp). Each returns the image with a mask of its finding.
The chest names are re-exported here for the callers that predate the package.
"""

from __future__ import annotations

from dicom_ai.train.phantoms.brain_mr import brain_mr_phantom
from dicom_ai.train.phantoms.chest import DEFAULT_SIZE, MIN_SIZE, chest_phantom, render
from dicom_ai.train.phantoms.common import BRAIN, BREAST, LUNGS, MUCOSA, Phantom, VolumePhantom
from dicom_ai.train.phantoms.ct_volume import ct_volume_phantom, window
from dicom_ai.train.phantoms.endoscopy import endoscopy_phantom
from dicom_ai.train.phantoms.mammography import mammography_phantom

__all__ = [
    "BRAIN",
    "BREAST",
    "DEFAULT_SIZE",
    "LUNGS",
    "MIN_SIZE",
    "MUCOSA",
    "Phantom",
    "VolumePhantom",
    "brain_mr_phantom",
    "chest_phantom",
    "ct_volume_phantom",
    "endoscopy_phantom",
    "mammography_phantom",
    "render",
    "window",
]
