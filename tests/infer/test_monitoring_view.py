"""What evaluate and export read from a card (thresholds, drift reference) without the cost of loading the
registry: the same values as the fully validated card, no torch or MONAI imported, a bad section named."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicom_ai.infer.card import CardError
from dicom_ai.infer.registry import ModelRegistry, monitoring_view

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_the_view_equals_the_validated_cards() -> None:
    cards = ModelRegistry(MODELS).cards()
    assert cards
    for name, card in cards.items():
        view = monitoring_view(MODELS, name)
        assert view is not None
        assert view.references == (card.reference.references() if card.reference is not None else {})
        assert view.thresholds == {label.name: label.threshold for label in card.labels
                                   if isinstance(label.threshold, float)}
    assert monitoring_view(MODELS, "no-such-model") is None


def test_reading_the_view_imports_neither_torch_nor_monai() -> None:
    code = ("import sys; from pathlib import Path; from dicom_ai.infer.registry import monitoring_view; "
            f"assert monitoring_view(Path({str(MODELS)!r}), 'chest-xray-demo').references; "
            "print(sorted(m for m in ('torch', 'monai', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_a_bad_reference_is_refused_naming_the_card(tmp_path: Path) -> None:
    folder = tmp_path / "chest"
    shutil.copytree(MODELS / "chest-xray-demo", folder, ignore=shutil.ignore_patterns("*.pt", "*.onnx", "*.pth"))
    card = yaml.safe_load((folder / "model.yaml").read_text())
    card["reference"]["properties"]["rows"]["kind"] = "categorical"
    (folder / "model.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(CardError, match=r"chest/model.yaml: field .reference\.properties\.rows"):
        monitoring_view(tmp_path, "chest-xray-demo")
