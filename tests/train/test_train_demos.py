"""Each demo recipe trains (a few steps on a few phantoms) into a folder the node accepts, labelled
SYNTHETIC / NOT FOR CLINICAL USE, and the model it writes runs on the DICOM study the phantom
writer produces for it: volumes as volumes, colour as colour, mammograms by view."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_ai.infer import load_card
from dicom_ai.infer.check import check_model_folder
from dicom_ai.infer.runner import LoadedModel
from dicom_ai.train import phantom_dicom
from dicom_ai.train.demos import train_demo
from tests.infer.infer_support import instance_for

WRITERS: dict[str, Callable[..., list[Path]]] = {
    "mammography": phantom_dicom.write_mammography_study,
    "brain-mr": phantom_dicom.write_brain_mr_study,
    "ct-head": phantom_dicom.write_ct_volume_study,
    "endoscopy": phantom_dicom.write_endoscopy_study,
}
EXPECTED = {
    "mammography": ("MG", 2, 1, 4),  # modality, dims, channels, results on the 4-view study
    "brain-mr": ("MR", 2, 1, 5),
    "ct-head": ("CT", 3, 1, 3),  # a volume: one probability, heatmaps on its 3 most salient slices
    "endoscopy": ("ES", 2, 3, 2),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_demo_recipe_trains_and_its_model_reads_its_study(name: str, tmp_path: Path) -> None:
    out = tmp_path / name
    report = train_demo(name, out, seed=0, quick=True)
    card = load_card(out / "model.yaml")
    modality, dims, channels, results_expected = EXPECTED[name]
    assert card.gate["Modality"] == [modality] and card.input.dims == dims and card.input.channels == channels
    assert card.not_for_clinical_use and "SYNTHETIC DATA - NOT FOR CLINICAL USE" in card.intended_use
    assert "NOT FOR CLINICAL USE" in (out / "README.md").read_text()
    metrics = report["metrics"]
    for key in ("auroc", "auroc_95ci_bootstrap", "sensitivity", "specificity", "calibration", "pointing_game"):
        assert key in metrics, key
    assert card.training["generator"].startswith("dicom_ai.train.phantoms.") and card.training["seed"] == 0
    assert not (out / "checkpoints").exists()
    assert check_model_folder(out).ok

    study = WRITERS[name](tmp_path / "study", seed=1, finding=True)
    model = LoadedModel.load(out, card)
    results = model.predict([instance_for(p) for p in study], heatmaps="all")
    assert len(results) == results_expected
    assert all(r.heatmap is not None and r.heatmap.shape == r.display.shape[:2] for r in results)
    assert all(r.display.ndim == (3 if channels == 3 else 2) for r in results)  # colour shown in colour


def test_demo_recipe_is_reproducible(tmp_path: Path) -> None:
    import torch

    first = train_demo("brain-mr", tmp_path / "a", seed=3, quick=True)
    second = train_demo("brain-mr", tmp_path / "b", seed=3, quick=True)
    assert first["metrics"]["auroc"] == second["metrics"]["auroc"]
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
