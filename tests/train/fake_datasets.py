"""Tiny fake copies of each seed-dataset layout, big enough to train on end to end.

Each builder writes enough patients per class that patient-level splitting puts both classes
in train, val and test, keeps the real layout's naming and quirks (nested copies, macOS debris,
per-breast labels, label volumes with and without the target), and gives positives a brighter
blob, so one short epoch is a real (if weak) learning problem, not a degenerate one.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

IMAGE_SIZE = 40
VOLUME_SHAPE = (8, 24, 24)  # slices, rows, columns (stored as NIfTI x, y, z = 24, 24, 8)
DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
DIGITAL_XRAY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def blob_image(rng: np.random.Generator, positive: bool, *, size: int = IMAGE_SIZE, rgb: bool = False) -> np.ndarray:
    """uint8 noise on a gradient; positives get a bright disc at a random place (the learnable signal)."""
    rows, columns = np.mgrid[0:size, 0:size]
    image = 60.0 + 40.0 * rows / size + rng.normal(0.0, 12.0, (size, size))
    if positive:
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        image[(rows - cy) ** 2 + (columns - cx) ** 2 <= (size // 6) ** 2] += 110.0
    gray = np.clip(image, 0, 255).astype(np.uint8)
    if not rgb:
        return gray
    tint = np.array([1.0, 0.55, 0.45]) if positive else np.array([0.9, 0.6, 0.5])  # endoscopy-like reds
    return np.clip(gray[..., None] * tint + rng.normal(0.0, 4.0, (size, size, 3)), 0, 255).astype(np.uint8)


def save_image(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_dicom(path: Path, pixels: np.ndarray, *, patient: str, modality: str, sop_class: str,
                extra: dict[str, str] | None = None) -> Dataset:
    """A minimal uncompressed grayscale DICOM file (12 bits stored) holding `pixels` scaled by 16."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = patient, modality
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


# --- Kaggle chest X-ray pneumonia -------------------------------------------------------------

def make_pneumonia(root: Path, *, seed: int = 0) -> Path:
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/ with real file naming, a nested copy and __MACOSX.

    12 patients per class: 8 in train (some with 2 images), 1 in the (too small) val folder, 3 in test.
    """
    rng = np.random.default_rng(seed)
    folders = {"train": range(8), "val": range(8, 9), "test": range(9, 12)}
    for split, patients in folders.items():
        for p in patients:
            normal = [f"IM-{115 + p:04d}-0001"] if p % 3 else [f"NORMAL2-IM-{1427 + p:04d}-0001"]
            pneumonia = [f"person{p + 1}_bacteria_{p + 1}"]
            if split == "train" and p % 2 == 0:
                normal.append(normal[0][:-1] + "2")
                pneumonia.append(f"person{p + 1}_virus_{p + 6}")
            for class_name, stems in (("NORMAL", normal), ("PNEUMONIA", pneumonia)):
                for name in stems:
                    pixels = blob_image(rng, class_name == "PNEUMONIA", rgb=name.endswith("0002"))  # a few RGB JPEGs
                    save_image(root / "chest_xray" / split / class_name / f"{name}.jpeg", pixels)
                    if split == "train":  # the zip's nested duplicate
                        save_image(root / "chest_xray" / "chest_xray" / split / class_name / f"{name}.jpeg", pixels)
    junk = root / "__MACOSX" / "chest_xray" / "train" / "NORMAL"
    junk.mkdir(parents=True)
    (junk / "._IM-0115-0001.jpeg").write_bytes(b"\0\5\26\7junk")
    (root / "chest_xray" / "train" / "NORMAL" / "._IM-0116-0001.jpeg").write_bytes(b"\0\5\26\7junk")
    (root / "chest_xray" / ".DS_Store").write_bytes(b"junk")
    return root


# --- Kvasir v2 --------------------------------------------------------------------------------

KVASIR_CLASSES = ("polyps", "esophagitis", "normal-cecum")


def make_kvasir(root: Path, *, per_class: int = 10, seed: int = 0) -> Path:
    """kvasir-dataset-v2/<class>/<uuid-like>.jpg, RGB; only polyps carry the blob."""
    rng = np.random.default_rng(seed)
    for class_name in KVASIR_CLASSES:
        for index in range(per_class):
            name = f"{class_name[:2]}{index:02d}a1f3-{index:04x}-4c2e.jpg"
            save_image(root / "kvasir-dataset-v2" / class_name / name, blob_image(rng, class_name == "polyps", rgb=True))
    (root / "kvasir-dataset-v2" / "polyps" / ".DS_Store").write_bytes(b"junk")
    return root


# --- Medical Segmentation Decathlon -----------------------------------------------------------

MSD_BRAIN_LABELS = {"0": "background", "1": "edema", "2": "enhancing tumour"}
MSD_LIVER_LABELS = {"0": "background", "1": "liver", "2": "cancer"}


def make_msd(root: Path, *, task: str = "Task01_BrainTumour", modality: str = "FLAIR",
             labels: dict[str, str] | None = None, cases: int = 20, seed: int = 0) -> Path:
    """<task>/dataset.json + imagesTr/labelsTr; every label volume has label 1, odd cases also label 2 (bright)."""
    rng = np.random.default_rng(seed)
    folder = root / task
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    depth, rows, columns = VOLUME_SHAPE
    training = []
    for case in range(cases):
        volume = 100.0 + rng.normal(0.0, 10.0, VOLUME_SHAPE)  # (z, y, x)
        label = np.zeros(VOLUME_SHAPE, dtype=np.uint8)
        label[2:6, 4:20, 4:20] = 1  # the organ (or oedema) in every case
        if case % 2:
            z, y, x = rng.integers(2, depth - 3), rng.integers(6, rows - 10), rng.integers(6, columns - 10)
            label[z : z + 2, y : y + 5, x : x + 5] = 2
            volume[label == 2] += 80.0
        name = f"{task.split('_')[-1][:5].upper()}_{case:03d}.nii.gz"
        affine = np.diag([1.0, 1.0, 2.5, 1.0])
        nib.save(nib.Nifti1Image(np.transpose(volume, (2, 1, 0)).astype(np.float32), affine), folder / "imagesTr" / name)
        nib.save(nib.Nifti1Image(np.transpose(label, (2, 1, 0)), affine), folder / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (folder / "imagesTr" / f"._{training[0]['image'].rsplit('/', 1)[-1]}").write_bytes(b"junk")
    (folder / "dataset.json").write_text(json.dumps({
        "name": task.split("_")[-1], "tensorImageSize": "3D", "modality": {"0": modality},
        "labels": labels or MSD_BRAIN_LABELS, "numTraining": cases, "training": training,
        "test": ["./imagesTs/X_900.nii.gz"],
    }, indent=1))
    return root


# --- RSNA screening mammography ---------------------------------------------------------------

RSNA_HEADER = "site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,machine_id,difficult_negative_case"


def make_rsna(root: Path, *, patients: int = 12, seed: int = 0) -> Path:
    """train.csv + train_images/<patient_id>/<image_id>.dcm (MG, L/R x CC/MLO); every other patient has cancer in one breast."""
    rng = np.random.default_rng(seed)
    lines = [RSNA_HEADER]
    image_id = 1000
    for p in range(patients):
        patient = str(10006 + 37 * p)
        cancer_side = ("L", "R")[p // 2 % 2] if p % 2 == 0 else None
        for laterality in ("L", "R"):
            for view in ("CC", "MLO"):
                image_id += 7
                cancer = int(laterality == cancer_side)
                pixels = blob_image(rng, bool(cancer), size=IMAGE_SIZE)
                write_dicom(root / "train_images" / patient / f"{image_id}.dcm", pixels, patient=patient, modality="MG",
                            sop_class=DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION,
                            extra={"ImageLaterality": laterality, "ViewPosition": view})
                lines.append(f"2,{patient},{image_id},{laterality},{view},61.0,{cancer},{cancer},0,,0,B,29,False")
    lines.append(f"2,10006,{image_id + 1},L,AT,61.0,0,0,0,,0,B,29,False")  # an extra view, not used by default
    lines.append(f"1,99999,{image_id + 2},R,CC,55.0,0,0,0,,0,B,48,False")  # partial download: no file
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


# --- KAU-BCMD ---------------------------------------------------------------------------------

KAU_FOLDERS = {1: "BIRADS1", 2: "BIRADS2", 3: "BI-RADS 3", 4: "BIRADS4", 5: "Birad5"}


def make_kau(root: Path, *, per_category: int = 5, seed: int = 0) -> Path:
    """KAU-BCMD/Dataset/<BI-RADS folder>/P<n>_<L|R>_<CC|MLO>.jpg; categories 4-5 carry the blob."""
    rng = np.random.default_rng(seed)
    data = root / "KAU-BCMD" / "Dataset"
    patient = 0
    for category, folder in KAU_FOLDERS.items():
        for _ in range(per_category):
            patient += 1
            views = ("L_CC", "L_MLO") if patient % 2 else ("R_CC",)
            for view in views:
                save_image(data / folder / f"P{patient}_{view}.jpg", blob_image(rng, category >= 4))
    (data / "notes").mkdir()
    (data / "notes" / "readme.txt").write_text("category folders as published")
    return root


# --- a site's own DICOM export + labels.csv -----------------------------------------------------

def make_dicom_csv(root: Path, *, patients: int = 20, seed: int = 0) -> Path:
    """export/<patient>/<n>.dcm (DX, some without suffix) + labels.csv (path, label normal|pneumonia, finding 0|1)."""
    rng = np.random.default_rng(seed)
    lines = ["path,label,finding"]
    for p in range(patients):
        positive = p % 2 == 1
        patient = f"SITE-{p:04d}"
        for image in range(1 + p % 3 // 2):
            relative = f"export/{patient}/{image + 1}" + (".dcm" if image == 0 else "")
            write_dicom(root / relative, blob_image(rng, positive), patient=patient, modality="DX",
                        sop_class=DIGITAL_XRAY_FOR_PRESENTATION)
            lines.append(f"{relative},{'pneumonia' if positive else 'normal'},{int(positive)}")
    (root / "export" / "README.txt").write_text("not dicom")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root
