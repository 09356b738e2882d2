"""The validation loop's card fields: labels[].report_terms (how a final report states a label) and
reference (the validation-time distributions drift is measured against); mistakes are named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicom_ai.domain import CategoricalReference, NumericReference, ReportRule
from dicom_ai.infer.card import CardError, ReferenceSpec, load_card, set_card_reference
from dicom_ai.metrics import categorical_reference, numeric_reference
from tests.infer.infer_support import valid_card

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, card: dict[str, Any]) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")
    return path


def with_terms(terms: Any) -> dict[str, Any]:
    card = valid_card()
    card["labels"][0]["report_terms"] = terms
    return card


def test_report_terms_become_the_rules_the_loop_reads(tmp_path: Path) -> None:
    card = load_card(write(tmp_path, with_terms({"codes": ["95436008"], "keywords": ["consolidation", "airspace opacity"]})))
    assert card.report_rules == [ReportRule(card.name, "Consolidation", ("95436008",), ("consolidation", "airspace opacity"))]


@pytest.mark.parametrize(("terms", "expected"), [
    ({}, "list at least one code or keyword"),
    ({"keywords": ["consolidation", "Consolidation"]}, "keywords must differ"),
    ({"keywords": ["no consolidation!"]}, "keyword 'no consolidation!' must be"),
    ({"codes": ["95436008^SCT"]}, "code '95436008^SCT' must be"),
    ({"keywords": ["x"], "synonyms": ["y"]}, "report_terms.synonyms': unknown field"),
])
def test_bad_report_terms_are_named(tmp_path: Path, terms: dict[str, Any], expected: str) -> None:
    with pytest.raises(CardError) as raised:
        load_card(write(tmp_path, with_terms(terms)))
    assert "model.yaml: field 'labels[0].report_terms" in str(raised.value) and expected in str(raised.value)


def test_every_shipped_demo_card_says_how_a_report_states_its_label() -> None:
    for folder in ("chest-xray-demo", "mammography-demo", "brain-mr-demo", "ct-head-demo", "endoscopy-demo"):
        card = load_card(REPO / "models" / folder / "model.yaml")
        assert [rule.label for rule in card.report_rules] == [label.name for label in card.labels if label.report], folder


def reference() -> ReferenceSpec:
    return ReferenceSpec.model_validate({
        "source": "40 phantoms", "command": "dicom-ai models reference tiny-chest",
        "scores": {"Consolidation": numeric_reference([0.1, 0.2, 0.8, 0.9] * 10)},
        "properties": {"rows": numeric_reference([672] * 40), "manufacturer": categorical_reference(["A"] * 30 + ["B"] * 10)},
    })


def test_reference_is_written_into_the_card_leaving_the_rest_as_it_was(tmp_path: Path) -> None:
    path = write(tmp_path, valid_card())
    before = path.read_text()
    card = set_card_reference(path, reference())
    text = path.read_text()
    assert text.startswith(before) and "reference:" in text[len(before):]  # appended, nothing else changed
    assert "quantiles: [672.0, 672.0" in text  # lists of numbers on one line
    assert load_card(path) == card
    found = card.reference.references() if card.reference else {}
    assert isinstance(found["score:Consolidation"], NumericReference)
    assert found["manufacturer"] == CategoricalReference(40, (("A", 0.75), ("B", 0.25)))
    set_card_reference(path, reference())  # written again: replaced, not repeated
    assert path.read_text().count("reference:") == 1


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda r: r["scores"].update({"Effusion": r["scores"]["Consolidation"]}), "names Effusion, which is not a reported label"),
    (lambda r: r["properties"].update({"colour": r["properties"]["rows"]}), "'colour' is not a watched property"),
    (lambda r: r["properties"].update({"rows": r["properties"]["manufacturer"]}), "property 'rows' is numeric"),
    (lambda r: r["scores"]["Consolidation"].update({"proportions": [0.5, 0.2]}), "edges make"),
])
def test_bad_references_are_named(tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    card = valid_card()
    card["reference"] = reference().model_dump(mode="json")
    mutate(card["reference"])
    with pytest.raises(CardError, match=expected):
        load_card(write(tmp_path, card))
