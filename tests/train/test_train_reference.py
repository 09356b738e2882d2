"""The drift reference in a card comes from studies run through the node's own inference path; the five
shipped demo cards carry one written by `dicom-ai train reference` (never by hand)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dicom_ai.infer.card import load_card
from dicom_ai.infer.runner import LoadedModel
from dicom_ai.train.names import DEMO_FOLDERS
from dicom_ai.train.phantom_dicom import write_chest_cr_study
from dicom_ai.train.reference import demo_reference, score_study

REPO = Path(__file__).resolve().parents[2]


def test_a_demo_reference_scores_phantom_studies_and_keeps_their_properties(tmp_path: Path) -> None:
    folder = tmp_path / "chest-xray-demo"
    shutil.copytree(REPO / "models" / "chest-xray-demo", folder)
    card = demo_reference("chest-xray", folder, cases=12, seed=5)
    assert card.reference is not None
    assert card.reference.command == "dicom-ai train reference chest-xray --cases 12 --seed 5"
    scores = card.reference.scores["Consolidation"]
    assert scores.n == 12 and len(scores.quantiles) == 21
    assert set(card.reference.properties) == {"rows", "columns", "pixel_spacing", "manufacturer", "photometric"}
    assert card.reference.properties["rows"].quantiles[0] == 672.0  # the writer's CR: 224 px enlarged 3 times
    # The study with the lowest seed, scored again alone: its score is among the reference's.
    model = LoadedModel.load(folder, load_card(folder / "model.yaml"))
    study = score_study(model, write_chest_cr_study(tmp_path / "again", 5, True))
    assert scores.quantiles[0] <= study.scores["Consolidation"] <= scores.quantiles[-1]
    assert study.thresholds == {"Consolidation": 0.3494} and [i.rows for i in study.images] == [672]


@pytest.mark.parametrize("demo", list(DEMO_FOLDERS))
def test_every_shipped_demo_card_has_a_reference_made_by_the_command(demo: str) -> None:
    card = load_card(REPO / "models" / DEMO_FOLDERS[demo] / "model.yaml")
    assert card.reference is not None, f"run `dicom-ai train reference {demo}`"
    assert card.reference.command.startswith(f"dicom-ai train reference {demo} --cases ")
    assert set(card.reference.scores) == {label.name for label in card.labels if label.report}
    assert {"rows", "columns", "manufacturer", "photometric"} <= set(card.reference.properties)
