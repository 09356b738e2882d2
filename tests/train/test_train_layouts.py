"""Dataset layouts: tiny fake copies of each published layout are detected, labelled and grouped.

Each fake keeps the real dataset's quirks that matter (the nested pneumonia copy and __MACOSX
debris, BI-RADS folder spellings, MSD 4-D images and ._ files, RSNA rows without files).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dicom_ai.train.layouts import (
    LabelledSet,
    LayoutError,
    Sample,
    detect_layout,
    load_array,
    load_mask,
    plan_splits,
    read_dataset,
    split_samples,
)


def write_image(path: Path, value: int = 100, mode: str = "L", size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    if mode == "RGB":
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    else:
        pixels = np.full((size, size), value, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return path


def write_dicom(path: Path, patient: str, *, modality: str = "MG", study: str | None = None, series: str | None = None,
                sop: str | None = None, rows: int = 32) -> Dataset:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID, ds.Modality = patient, modality
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * rows, dtype=np.uint16).reshape(rows, rows) % 4096).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def assert_disjoint(splits: dict[str, list[Sample]], dataset: LabelledSet) -> None:
    seen: dict[str, str] = {}
    for split, samples in splits.items():
        for sample in samples:
            assert seen.setdefault(sample.group, split) == split, f"{sample.group} in {seen[sample.group]} and {split}"
    assert sorted(s.path for ss in splits.values() for s in ss) == sorted(s.path for s in dataset.samples)


# --- pneumonia -------------------------------------------------------------------------------

PNEUMONIA_FILES = {
    "train/NORMAL": ["IM-0001-0001", "IM-0001-0002", "IM-0002-0001", "NORMAL2-IM-0003-0001", "IM-0004-0001",
                     "IM-0005-0001", "IM-0009-0001", "IM-0010-0001"],
    "train/PNEUMONIA": ["person1_bacteria_1", "person1_virus_6", "person2_bacteria_3", "person3_virus_4",
                        "person4_bacteria_5", "person5_bacteria_6", "person8_virus_1", "person9_virus_2"],
    "val/NORMAL": ["IM-0006-0001"],
    "val/PNEUMONIA": ["person6_bacteria_7"],
    "test/NORMAL": ["IM-0007-0001", "IM-0008-0001", "NORMAL2-IM-0011-0001"],
    "test/PNEUMONIA": ["person7_virus_8", "person1_bacteria_9", "person10_virus_3"],
}


@pytest.fixture(scope="module")
def pneumonia_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kaggle")
    for folder, stems in PNEUMONIA_FILES.items():
        for index, name in enumerate(stems):
            write_image(root / "chest_xray" / folder / f"{name}.jpeg", value=index * 10, mode="RGB" if index == 0 else "L")
            if folder.startswith("train"):  # the zip's nested duplicate
                write_image(root / "chest_xray" / "chest_xray" / folder / f"{name}.jpeg", value=index * 10)
    (root / "__MACOSX" / "chest_xray" / "train" / "NORMAL").mkdir(parents=True)
    (root / "__MACOSX" / "chest_xray" / "train" / "NORMAL" / "._IM-0001-0001.jpeg").write_bytes(b"\0\5\26\7junk")
    (root / "chest_xray" / "train" / "NORMAL" / "._IM-0001-0001.jpeg").write_bytes(b"\0\5\26\7junk")
    (root / "chest_xray" / ".DS_Store").write_bytes(b"junk")
    return root


def test_pneumonia_detected_deduplicated_and_grouped_by_patient(pneumonia_root: Path) -> None:
    assert detect_layout(pneumonia_root) == "pneumonia"
    assert detect_layout(pneumonia_root / "chest_xray") == "pneumonia"
    dataset = read_dataset(pneumonia_root)
    assert dataset.classes == ("NORMAL", "PNEUMONIA") and dataset.modality == "CR" and dataset.channels == 1
    assert len(dataset.samples) == sum(len(v) for v in PNEUMONIA_FILES.values())
    assert all("chest_xray/chest_xray" not in s.path.as_posix() and "__MACOSX" not in s.path.as_posix() for s in dataset.samples)
    assert any("16 duplicate images" in note for note in dataset.notes)
    by_name = {s.path.stem: s for s in dataset.samples}
    assert by_name["IM-0001-0002"].group == "IM-0001"
    assert by_name["NORMAL2-IM-0003-0001"].group == "NORMAL2-IM-0003"
    assert by_name["person1_virus_6"].group == "person1" and by_name["person1_virus_6"].label == 1
    assert by_name["IM-0006-0001"].split == "val" and by_name["IM-0006-0001"].label == 0


def test_pneumonia_splits_move_patients_and_redraw_a_tiny_val(pneumonia_root: Path) -> None:
    dataset = read_dataset(pneumonia_root / "chest_xray")
    plan = plan_splits(dataset, val=0.3, test=0.15, seed=0)  # 2 val images of 23 < half of 30%
    assert_disjoint(plan.splits, dataset)
    # person1 has two train images and one test image: the whole patient stays in train
    assert {s.path.stem for s in plan.splits["train"] if s.group == "person1"} == {"person1_bacteria_1", "person1_virus_6", "person1_bacteria_9"}
    assert {s.path.stem for s in plan.splits["test"]} == {"IM-0007-0001", "IM-0008-0001", "NORMAL2-IM-0011-0001", "person7_virus_8", "person10_virus_3"}
    assert len(plan.splits["val"]) >= 3 and {s.label for s in plan.splits["val"]} == {0, 1}
    assert any("moved" in note for note in plan.notes) and any("val split (2 samples) is too small" in n for n in plan.notes)
    assert split_samples(dataset, val=0.3, test=0.15, seed=0) == plan.splits


def test_nifti_volumes_read_the_same_whatever_their_affine(tmp_path: Path) -> None:
    """The same patient stored in RAS and in LPS voxel order reads as the same DICOM-ordered volume."""
    ras = np.zeros((8, 6, 4), dtype=np.float32)
    ras[6, 1, 2] = 5.0  # right, posterior, upper
    lps = ras[::-1, ::-1, :].copy()  # the same voxels stored left-to-right and back-to-front
    to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    to_lps[:3, 3] = [7.0, 5.0, 0.0]  # so that both files cover the same millimetres
    nib.save(nib.Nifti1Image(ras, np.eye(4)), tmp_path / "ras.nii.gz")
    nib.save(nib.Nifti1Image(lps, to_lps), tmp_path / "lps.nii.gz")
    dataset = LabelledSet("msd", tmp_path, ("no", "yes"), (), dims=3, channels=1, modality="CT")
    volumes = [load_array(Sample(tmp_path / name, 0, name), dataset) for name in ("ras.nii.gz", "lps.nii.gz")]
    assert np.array_equal(volumes[0], volumes[1])
    assert volumes[0].shape == (4, 6, 8) and volumes[0][2, 4, 1] == 5.0  # rows A->P, columns R->L


def test_pneumonia_load_array_is_grayscale_uint8_even_for_rgb_jpegs(pneumonia_root: Path) -> None:
    dataset = read_dataset(pneumonia_root, layout="pneumonia")
    rgb = next(s for s in dataset.samples if s.path.stem == "IM-0001-0001")
    array = load_array(rgb, dataset)
    assert array.shape == (32, 32) and array.dtype == np.uint8


# --- kvasir and plain class folders -----------------------------------------------------------

def test_kvasir_multiclass_and_binary(tmp_path: Path) -> None:
    for cls in ("polyps", "esophagitis", "normal-cecum"):
        for index in range(3):
            write_image(tmp_path / "kvasir-dataset-v2" / cls / f"{cls[:3]}{index}.jpg", value=index, mode="RGB")
    (tmp_path / "kvasir-dataset-v2" / "polyps" / ".DS_Store").write_bytes(b"junk")
    assert detect_layout(tmp_path) == "kvasir"
    dataset = read_dataset(tmp_path)
    assert dataset.classes == ("esophagitis", "normal-cecum", "polyps") and dataset.modality == "ES"
    assert len(dataset.samples) == 9 and dataset.channels == 3
    assert any("no patient ids" in note for note in dataset.notes)
    binary = read_dataset(tmp_path, positive=("polyps",))
    assert binary.classes == ("other", "polyps") and sum(s.label for s in binary.samples) == 3
    assert load_array(binary.samples[0], binary).shape == (32, 32, 3)
    with pytest.raises(LayoutError, match="positive classes"):
        read_dataset(tmp_path, positive=("tumour",))


def test_generic_folders_fall_back_and_guess_grayscale(tmp_path: Path) -> None:
    for cls in ("benign", "malignant"):
        for index in range(2):
            write_image(tmp_path / cls / f"{cls}{index}.png", value=40 * index)
    assert detect_layout(tmp_path) == "folders"
    dataset = read_dataset(tmp_path)
    assert dataset.classes == ("benign", "malignant") and dataset.channels == 1
    assert load_array(dataset.samples[0], dataset).shape == (32, 32)


# --- MSD --------------------------------------------------------------------------------------

def test_msd_volume_labels_channel_and_axes(tmp_path: Path) -> None:
    task = tmp_path / "Task01_BrainTumour"
    training = []
    for case in range(4):
        image = np.zeros((8, 6, 4, 2), dtype=np.float32)  # x, y, z, channel
        image[..., 1] = 1000.0
        image[7, 0, 0, 0] = case  # a marker at x=7, y=0, z=0
        label = np.zeros((8, 6, 4), dtype=np.uint8)
        label[1, 1, 1] = 1
        if case % 2:
            label[2, 2, 2] = 2
        (task / "imagesTr").mkdir(parents=True, exist_ok=True)
        (task / "labelsTr").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(image, np.eye(4)), task / "imagesTr" / f"BRATS_00{case}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), task / "labelsTr" / f"BRATS_00{case}.nii.gz")
        training.append({"image": f"./imagesTr/BRATS_00{case}.nii.gz", "label": f"./labelsTr/BRATS_00{case}.nii.gz"})
    (task / "imagesTr" / "._BRATS_000.nii.gz").write_bytes(b"junk")
    (task / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "enhancing tumour"},
        "training": training, "test": ["./imagesTs/BRATS_900.nii.gz"],
    }))
    assert detect_layout(tmp_path) == "msd" and detect_layout(task) == "msd"
    dataset = read_dataset(tmp_path)
    assert dataset.classes == ("no enhancing tumour", "enhancing tumour") and dataset.modality == "MR" and dataset.dims == 3
    assert [s.label for s in dataset.samples] == [0, 1, 0, 1]
    assert [s.group for s in dataset.samples] == ["BRATS_000", "BRATS_001", "BRATS_002", "BRATS_003"]
    volume = load_array(dataset.samples[3], dataset)
    # x=7 is the patient's rightmost column (RAS affine), y=0 the most posterior row: in the node's
    # DICOM axial order (columns right -> left, rows anterior -> posterior) that is row 5, column 0.
    assert volume.shape == (4, 6, 8) and volume.dtype == np.float32 and volume[0, 5, 0] == 3.0
    assert load_mask(dataset.samples[3]).shape == (4, 6, 8)
    edema = read_dataset(tmp_path, target_label="edema", channel=1)
    assert [s.label for s in edema.samples] == [1, 1, 1, 1]
    assert float(load_array(edema.samples[0], edema).max()) == 1000.0
    with pytest.raises(LayoutError, match="no option"):
        read_dataset(tmp_path, positive=("x",))
    (task / "labelsTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(LayoutError, match=r"training\[2\].*BRATS_002"):
        read_dataset(tmp_path)


# --- RSNA mammography -------------------------------------------------------------------------

RSNA_HEADER = "site_id,patient_id,image_id,laterality,view,age,cancer,biopsy,invasive,BIRADS,implant,density,machine_id,difficult_negative_case"


def make_rsna(root: Path, rows: list[tuple[str, str, str, str, str]]) -> None:
    lines = [RSNA_HEADER]
    for patient, image, laterality, view, cancer in rows:
        lines.append(f"2,{patient},{image},{laterality},{view},61.0,{cancer},0,0,,0,,29,False")
    (root / "train.csv").write_text("\n".join(lines) + "\n")


def test_rsna_per_breast_labels_patient_groups_and_missing_files(tmp_path: Path) -> None:
    rows = []
    for p in range(4):
        patient = str(10000 + p)
        for laterality, view, image in (("L", "CC", 1), ("L", "MLO", 2), ("R", "CC", 3), ("R", "MLO", 4)):
            cancer = "1" if p % 2 and laterality == "L" else "0"
            image_id = f"{p}{image}"
            rows.append((patient, image_id, laterality, view, cancer))
            write_dicom(tmp_path / "train_images" / patient / f"{image_id}.dcm", patient)
    rows.append(("10000", "99", "L", "AT", "0"))
    rows.append(("10009", "98", "R", "CC", "0"))  # no file
    make_rsna(tmp_path, rows)
    assert detect_layout(tmp_path) == "rsna-mammo"
    dataset = read_dataset(tmp_path)
    assert dataset.classes == ("no cancer", "cancer") and dataset.modality == "MG" and len(dataset.samples) == 16
    assert sum(s.label for s in dataset.samples) == 4 and {s.group for s in dataset.samples} == {"10000", "10001", "10002", "10003"}
    assert any("1 images listed" in n for n in dataset.notes) and any("AT (1)" in n for n in dataset.notes)
    only_cc = read_dataset(tmp_path, views=("CC",))
    assert len(only_cc.samples) == 8
    splits = split_samples(dataset, val=0.25, test=0.25, seed=1)
    assert_disjoint(splits, dataset)
    array = load_array(dataset.samples[0], dataset)
    assert array.shape == (32, 32) and array.dtype == np.uint8


def test_rsna_errors_name_the_csv_line_and_an_empty_download(tmp_path: Path) -> None:
    (tmp_path / "train_images").mkdir()
    make_rsna(tmp_path, [("1", "1", "L", "CC", "0"), ("1", "2", "L", "MLO", "maybe")])
    with pytest.raises(LayoutError, match=r"train.csv line 3: cancer must be 0 or 1"):
        read_dataset(tmp_path)
    make_rsna(tmp_path, [("1", "1", "L", "CC", "0")])
    with pytest.raises(LayoutError, match="none of the 1 images"):
        read_dataset(tmp_path)


# --- KAU-BCMD ---------------------------------------------------------------------------------

def test_kau_birads_spellings_nested_binary_and_patient_prefix(tmp_path: Path) -> None:
    data = tmp_path / "KAU-BCMD" / "Dataset"
    write_image(data / "BIRADS1" / "P1_L_CC.jpg")
    write_image(data / "BIRADS1" / "P1_R_CC.jpg")
    write_image(data / "bi-rads 3" / "img (3).jpg")
    write_image(data / "Birad4" / "P2_L_MLO.png")
    write_image(data / "5" / "P1_L_MLO.jpg")
    (data / "notes").mkdir()
    assert detect_layout(tmp_path) == "kau"
    dataset = read_dataset(tmp_path)
    assert dataset.classes == ("BI-RADS 1-3", "BI-RADS 4-6") and dataset.modality == "MG"
    labels = {s.path.name: (s.label, s.group) for s in dataset.samples}
    assert labels == {"P1_L_CC.jpg": (0, "P1"), "P1_R_CC.jpg": (0, "P1"), "img (3).jpg": (0, "img (3)"),
                      "P2_L_MLO.png": (1, "P2"), "P1_L_MLO.jpg": (1, "P1")}
    multi = read_dataset(tmp_path, positive=None)
    assert multi.classes == ("BI-RADS 1", "BI-RADS 3", "BI-RADS 4", "BI-RADS 5")


# --- DICOM + CSV ------------------------------------------------------------------------------

def test_dicom_csv_by_uid_path_and_missing_rows(tmp_path: Path) -> None:
    study = generate_uid()
    a = write_dicom(tmp_path / "a" / "1.dcm", "PAT-A", modality="DX", study=study)
    write_dicom(tmp_path / "a" / "2", "PAT-A", modality="DX", study=study)  # no suffix, as PACS exports
    b = write_dicom(tmp_path / "b" / "1.dcm", "PAT-B", modality="DX")
    write_dicom(tmp_path / "c" / "1.dcm", "PAT-C", modality="CR")
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / "labels.csv").write_text(f"StudyInstanceUID,label\n{study},1\n{b.StudyInstanceUID},0\n")
    assert detect_layout(tmp_path) == "dicom-csv"
    dataset = read_dataset(tmp_path)
    assert dataset.classes == ("0", "1") and dataset.modality == "DX" and len(dataset.samples) == 3
    assert {s.path.relative_to(tmp_path).as_posix(): (s.label, s.group) for s in dataset.samples} == {
        "a/1.dcm": (1, "PAT-A"), "a/2": (1, "PAT-A"), "b/1.dcm": (0, "PAT-B")}
    assert load_array(dataset.samples[0], dataset).shape == (32, 32)

    (tmp_path / "by_sop.csv").write_text(f"SOPInstanceUID;finding\n{a.SOPInstanceUID};yes\n1.2.3.4;no\n")
    with pytest.raises(LayoutError, match=r"by_sop.csv line 3: no DICOM file with SOPInstanceUID '1.2.3.4'"):
        read_dataset(tmp_path, layout="dicom-csv", csv="by_sop.csv", label_column="finding")
    skipped = read_dataset(tmp_path, layout="dicom-csv", csv="by_sop.csv", label_column="finding", skip_missing=True)
    assert skipped.classes == ("no", "yes") and [s.label for s in skipped.samples] == [1]

    (tmp_path / "by_path.csv").write_text("path,label\nc/1.dcm,2\nb/1.dcm,10\n")
    by_path = read_dataset(tmp_path, layout="dicom-csv", csv="by_path.csv")
    assert by_path.classes == ("2", "10") and {s.group for s in by_path.samples} == {"PAT-B", "PAT-C"}
    (tmp_path / "bad.csv").write_text("path,label\nc/1.dcm,2\nREADME.txt,1\n")
    with pytest.raises(LayoutError, match=r"bad.csv line 3: .*README.txt is not a readable DICOM file"):
        read_dataset(tmp_path, layout="dicom-csv", csv="bad.csv")


# --- detection, splitting, errors ------------------------------------------------------------

def test_unknown_and_ambiguous_folders_say_what_was_found(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LayoutError, match=r"not recognised; it holds notes.txt\. Accepted layouts: msd"):
        detect_layout(tmp_path)
    (tmp_path / "dataset.json").write_text("{}")
    (tmp_path / "train.csv").write_text(RSNA_HEADER + "\n")
    (tmp_path / "train_images").mkdir()
    with pytest.raises(LayoutError, match=r"several layouts \(msd, rsna-mammo\)"):
        detect_layout(tmp_path)
    with pytest.raises(LayoutError, match="not found"):
        detect_layout(tmp_path / "missing")
    with pytest.raises(LayoutError, match="layout 'nope' unknown"):
        read_dataset(tmp_path, layout="nope")


def test_group_split_is_stratified_deterministic_and_disjoint(tmp_path: Path) -> None:
    samples = []
    for patient in range(40):
        label = int(patient < 10)
        for image in range(1 + patient % 3):
            samples.append(Sample(path=tmp_path / f"{patient}-{image}.png", label=label, group=f"P{patient}"))
    dataset = LabelledSet(layout="test", root=tmp_path, classes=("neg", "pos"), samples=tuple(samples),
                          dims=2, channels=1, modality="OT")
    splits = split_samples(dataset, val=0.2, test=0.2, seed=3)
    assert_disjoint(splits, dataset)
    assert splits == split_samples(dataset, val=0.2, test=0.2, seed=3)
    assert splits != split_samples(dataset, val=0.2, test=0.2, seed=4)
    for split in ("val", "test"):
        positives = sum(s.label for s in splits[split])
        assert 2 <= positives <= 6 and 0.1 < len(splits[split]) / len(samples) < 0.3
    with pytest.raises(LayoutError, match="fractions"):
        split_samples(dataset, val=0.6, test=0.5)


def test_load_array_names_a_missing_or_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    dataset = LabelledSet(layout="folders", root=tmp_path, classes=("a", "b"),
                          samples=(Sample(broken, 0, "g"),), dims=2, channels=1, modality="OT")
    with pytest.raises(LayoutError, match=r"broken.jpg: cannot read the image"):
        load_array(dataset.samples[0], dataset)
    with pytest.raises(LayoutError, match=r"gone.dcm: file not found"):
        load_array(Sample(tmp_path / "gone.dcm", 0, "g"), dataset)
    with pytest.raises(LayoutError, match="label 2 is not an index"):
        LabelledSet(layout="x", root=tmp_path, classes=("a", "b"), samples=(Sample(broken, 2, "g"),),
                    dims=2, channels=1, modality="OT")
