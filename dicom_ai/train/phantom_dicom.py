"""Write studies of synthetic phantoms as DICOM files: for end-to-end tests, benchmarks and demos.

Each writer builds one study (mammography, brain MR, head CT, colonoscopy) that passes dciodvfy
without errors, so that an administrator can send it to a node and see the whole chain work.
UIDs are derived from the seed (uuid5 under "2.25."), so the same call writes the same files.
Every file says SYNTHETIC in StudyDescription and ImageComments: it must never pass for a patient.
"""

from __future__ import annotations

import datetime as _dt
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_ai.train.phantoms.brain_mr import brain_mr_phantom
from dicom_ai.train.phantoms.chest import chest_phantom
from dicom_ai.train.phantoms.ct_volume import ct_volume_phantom
from dicom_ai.train.phantoms.endoscopy import endoscopy_phantom
from dicom_ai.train.phantoms.mammography import Laterality, View, mammography_phantom

log = logging.getLogger(__name__)

MANUFACTURER = "dicom-ai synthetic phantom"
SYNTHETIC = "SYNTHETIC"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
VL_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1"
_UID_NAMESPACE = uuid.UUID("6f1c1c1e-6a4e-4c39-9a55-2b1f0f3d7a10")
_STUDY_DATE = _dt.date(2024, 1, 15)
_AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@dataclass(frozen=True)
class StudyInfo:
    """Who and what the study is about; shared by every writer."""

    seed: int
    finding: bool
    patient_id: str
    patient_name: str
    study_instance_uid: str


def deterministic_uid(*parts: object) -> str:
    """A DICOM UID "2.25.<uuid5 as int>" from the given parts: same parts, same UID (PS3.5 B.2)."""
    return "2.25." + str(uuid.uuid5(_UID_NAMESPACE, "/".join(str(p) for p in parts)).int)


def _study(seed: int, finding: bool, kind: str, patient_id: str | None, patient_name: str | None, study_uid: str | None) -> StudyInfo:
    pid = patient_id or f"SYNTH-{kind.upper()}-{seed}"
    return StudyInfo(
        seed=seed,
        finding=finding,
        patient_id=pid,
        patient_name=patient_name or f"Phantom^{kind.capitalize()}^{seed}",
        study_instance_uid=study_uid or deterministic_uid(kind, "study", pid, seed, finding),
    )


def _base(info: StudyInfo, sop_class: str, sop_uid: str, modality: str, description: str) -> Dataset:
    """Patient, study, series-independent equipment and SOP common attributes (type 1/2 filled)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID(deterministic_uid("dicom-ai", "implementation"))
    ds.file_meta.ImplementationVersionName = "DICOMAI_SYNTH"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F" if modality == "MG" else ("M" if info.seed % 2 else "F")
    ds.StudyInstanceUID = info.study_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _STUDY_DATE.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = f"SYN{info.seed % 10**9:09d}"[:16]
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(info.seed % 10**8)
    ds.StudyDescription = f"{SYNTHETIC} {description}"
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "dicom_ai.train.phantoms"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = SYNTHETIC
    ds.ImageComments = f"{SYNTHETIC} phantom, not a patient; finding {'present' if info.finding else 'absent'}"
    ds.BurnedInAnnotation = "NO"
    ds.PatientOrientation = ""
    return ds


def _series(ds: Dataset, info: StudyInfo, kind: str, number: int, description: str) -> None:
    ds.SeriesInstanceUID = deterministic_uid(info.study_instance_uid, kind, "series", number)
    ds.SeriesNumber = number
    ds.SeriesDescription = f"{SYNTHETIC} {description}"
    ds.FrameOfReferenceUID = deterministic_uid(info.study_instance_uid, kind, "frame-of-reference", number)
    ds.PositionReferenceIndicator = ""


def _grayscale_pixels(ds: Dataset, image: np.ndarray, bits: int = 8, signed: bool = False) -> None:
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    dtype = np.uint8 if bits == 8 else (np.int16 if signed else np.uint16)
    ds.PixelData = np.ascontiguousarray(image, dtype=dtype).tobytes()


def _save(ds: Dataset, out_dir: Path, name: str) -> Path:
    path = out_dir / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _prepare(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


# SNOMED CT view codes of CID 4014 (View for Mammography).
_MG_VIEWS = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
# The four screening views in the order they are numbered.
_MG_SCREENING: tuple[tuple[Laterality, View], ...] = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
# Patient Orientation (PS3.3 C.8.11.7): chest wall on the image left for L, right for R.
_MG_ORIENTATION: dict[tuple[Laterality, View], list[str]] = {
    ("L", "CC"): ["A", "R"],
    ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "FR"],
    ("R", "MLO"): ["P", "FL"],
}


def write_mammography_study(
    out_dir: str | Path,
    seed: int,
    finding: bool,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    size: tuple[int, int] = (256, 208),
) -> list[Path]:
    """Write a 4-view screening mammogram (L/R x CC/MLO), Digital Mammography For Presentation.

    With `finding`, the mass is in one breast (both of its views); returns the written paths.
    """
    out = _prepare(out_dir)
    info = _study(seed, finding, "mammography", patient_id, patient_name, study_instance_uid)
    rng = np.random.default_rng([seed, 1])
    sick_side = "L" if rng.random() < 0.5 else "R"
    paths = []
    for number, (side, view) in enumerate(_MG_SCREENING, start=1):
        phantom = mammography_phantom(
            np.random.default_rng([seed, number]), finding=finding and side == sick_side, size=size, view=view, laterality=side
        )
        sop_uid = deterministic_uid(info.study_instance_uid, "mg", number)
        ds = _base(info, MG_FOR_PRESENTATION, sop_uid, "MG", "Screening mammography")
        _series(ds, info, "mg", 1, "Screening mammography")
        del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator
        ds.InstanceNumber = number
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.BodyPartExamined = "BREAST"
        ds.ImageLaterality = side
        ds.ViewPosition = view
        ds.PatientOrientation = _MG_ORIENTATION[(side, view)]
        ds.PositionerType = "MAMMOGRAPHIC"
        ds.DistanceSourceToDetector = 660.0
        ds.DistanceSourceToPatient = 600.0
        ds.ExposureTime = 1000
        ds.XRayTubeCurrent = 100
        ds.Exposure = 100
        ds.KVP = 28.0
        ds.BodyPartThickness = 50.0
        ds.CompressionForce = 100.0
        ds.PositionerPrimaryAngle = 0.0 if view == "CC" else (45.0 if side == "R" else -45.0)
        ds.DetectorType = "DIRECT"
        ds.ImagerPixelSpacing = [0.4, 0.4]
        ds.PixelSpacing = [0.4, 0.4]
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.WindowCenter, ds.WindowWidth = 128, 256
        ds.LossyImageCompression = "00"
        ds.QualityControlImage = "NO"
        ds.PartialView = "NO"
        ds.BreastImplantPresent = "NO"
        ds.OrganExposed = "BREAST"
        ds.EstimatedRadiographicMagnificationFactor = 1.1
        ds.AnatomicRegionSequence = Sequence([_code("76752008", "SCT", "Breast")])
        ds.AcquisitionContextSequence = Sequence()
        ds.PresentationLUTShape = "IDENTITY"
        view_item = _code(*((_MG_VIEWS[view][0], "SCT", _MG_VIEWS[view][1])))
        view_item.ViewModifierCodeSequence = Sequence()
        ds.ViewCodeSequence = Sequence([view_item])
        _grayscale_pixels(ds, phantom.image)
        paths.append(_save(ds, out, f"MG_{number:02d}_{side}{view}.dcm"))
    log.info("wrote %d mammography images to %s (finding %s)", len(paths), out, finding)
    return paths


def _cross_sectional(ds: Dataset, index: int, thickness: float, spacing_yx: tuple[float, float], origin_z: float) -> None:
    """Axial, head first supine, the field centred on the isocentre; slices step by `thickness`."""
    x0, y0 = -spacing_yx[1] * ds.Columns / 2, -spacing_yx[0] * ds.Rows / 2
    ds.ImagePositionPatient = [round(x0, 3), round(y0, 3), round(origin_z + index * thickness, 3)]
    ds.ImageOrientationPatient = _AXIAL
    ds.PixelSpacing = [round(spacing_yx[0], 4), round(spacing_yx[1], 4)]
    ds.SliceThickness = round(thickness, 3)
    ds.SliceLocation = ds.ImagePositionPatient[2]
    ds.InstanceNumber = index + 1
    ds.PatientPosition = "HFS"


def write_chest_cr_study(
    out_dir: str | Path,
    seed: int,
    finding: bool,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    size: int = 224,
    enlarge: int = 3,
) -> list[Path]:
    """Write one PA chest CR (Computed Radiography Image Storage), drawn at the model's `size` and
    enlarged `enlarge` times (as a detector would deliver it); with `finding`, a consolidation."""
    out = _prepare(out_dir)
    info = _study(seed, finding, "chest", patient_id, patient_name, study_instance_uid)
    phantom = chest_phantom(np.random.default_rng(seed), finding=finding, size=size)
    pixels = np.kron(phantom.image.astype(np.uint16) * 16, np.ones((enlarge, enlarge), dtype=np.uint16))
    ds = _base(info, CR_IMAGE, deterministic_uid(info.study_instance_uid, "cr", 0), "CR", "Chest PA")
    _series(ds, info, "cr", 1, "Chest PA")
    del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator  # a projection radiograph has none
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    _grayscale_pixels(ds, pixels, bits=12)
    ds.PixelSpacing = [0.43, 0.43]  # mm: a 29 cm field at 672 pixels
    log.info("wrote a chest CR to %s (finding %s)", out, finding)
    return [_save(ds, out, "CR_001.dcm")]


def write_brain_mr_study(
    out_dir: str | Path,
    seed: int,
    finding: bool,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    slices: int = 5,
    size: tuple[int, int] = (192, 192),
) -> list[Path]:
    """Write one axial series of `slices` MR Image Storage files; with `finding`, the middle one has the mass.

    Each slice is drawn independently (a stack of phantoms, not a coherent volume).
    """
    out = _prepare(out_dir)
    info = _study(seed, finding, "brain-mr", patient_id, patient_name, study_instance_uid)
    paths = []
    for index in range(slices):
        phantom = brain_mr_phantom(np.random.default_rng([seed, index]), finding=finding and index == slices // 2, size=size)
        ds = _base(info, MR_IMAGE, deterministic_uid(info.study_instance_uid, "mr", index), "MR", "MR brain")
        _series(ds, info, "mr", 1, "Ax T2")
        ds.BodyPartExamined = "HEAD"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 4000.0
        ds.EchoTime = 100.0
        ds.EchoTrainLength = 16
        ds.MagneticFieldStrength = 1.5
        ds.ImagingFrequency = 63.87
        ds.ImagedNucleus = "1H"
        ds.SpacingBetweenSlices = 6.0
        ds.AcquisitionMatrix = [0, size[1], size[0], 0]
        ds.InPlanePhaseEncodingDirection = "ROW"
        ds.FlipAngle = 90.0
        ds.NumberOfAverages = 1.0
        _grayscale_pixels(ds, phantom.image, bits=12)  # the MR Image module allows 16 bits allocated only
        _cross_sectional(ds, index, 6.0, (230 / size[0], 230 / size[0]), -12.0)
        ds.WindowCenter, ds.WindowWidth = 128, 256
        paths.append(_save(ds, out, f"MR_{index + 1:03d}.dcm"))
    log.info("wrote %d brain MR slices to %s (finding %s)", len(paths), out, finding)
    return paths


def write_ct_volume_study(
    out_dir: str | Path,
    seed: int,
    finding: bool,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    shape: tuple[int, int, int] = (32, 96, 96),
) -> list[Path]:
    """Write one head CT series, one CT Image Storage file per slice (stored unsigned, intercept -1024)."""
    out = _prepare(out_dir)
    info = _study(seed, finding, "head-ct", patient_id, patient_name, study_instance_uid)
    phantom = ct_volume_phantom(np.random.default_rng(seed), finding=finding, shape=shape)
    dz, dy, dx = phantom.spacing_mm
    stored = (np.clip(phantom.volume_hu.astype(np.int32), -1024, 3071) + 1024).astype(np.uint16)
    paths = []
    for index in range(stored.shape[0]):
        ds = _base(info, CT_IMAGE, deterministic_uid(info.study_instance_uid, "ct", index), "CT", "CT head without contrast")
        _series(ds, info, "ct", 1, "Head 5mm brain")
        ds.BodyPartExamined = "HEAD"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = 120.0
        ds.XRayTubeCurrent = 250
        ds.ExposureTime = 1000
        ds.ConvolutionKernel = "STANDARD"
        ds.AcquisitionNumber = 1
        _grayscale_pixels(ds, stored[index], bits=12)
        _cross_sectional(ds, index, dz, (dy, dx), -40.0)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 80
        ds.WindowCenterWidthExplanation = "BRAIN"
        paths.append(_save(ds, out, f"CT_{index + 1:03d}.dcm"))
    log.info("wrote %d CT slices to %s (finding %s)", len(paths), out, finding)
    return paths


def write_endoscopy_study(
    out_dir: str | Path,
    seed: int,
    finding: bool,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_instance_uid: str | None = None,
    frames: int = 2,
    size: tuple[int, int] = (192, 192),
) -> list[Path]:
    """Write `frames` colonoscopy stills as VL Endoscopic Image Storage (RGB); with `finding`, the first has a polyp."""
    out = _prepare(out_dir)
    info = _study(seed, finding, "colonoscopy", patient_id, patient_name, study_instance_uid)
    paths = []
    for index in range(frames):
        phantom = endoscopy_phantom(np.random.default_rng([seed, index]), finding=finding and index == 0, size=size)
        ds = _base(info, VL_ENDOSCOPIC, deterministic_uid(info.study_instance_uid, "es", index), "ES", "Colonoscopy")
        _series(ds, info, "es", 1, "Colonoscopy stills")
        del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator
        ds.InstanceNumber = index + 1
        ds.BodyPartExamined = "COLON"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.LossyImageCompression = "00"
        ds.AnatomicRegionSequence = Sequence([_code("71854001", "SCT", "Colon")])
        ds.AcquisitionContextSequence = Sequence()
        ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
        ds.Rows, ds.Columns = int(phantom.image.shape[0]), int(phantom.image.shape[1])
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = np.ascontiguousarray(phantom.image).tobytes()
        paths.append(_save(ds, out, f"ES_{index + 1:02d}.dcm"))
    log.info("wrote %d endoscopy frames to %s (finding %s)", len(paths), out, finding)
    return paths
