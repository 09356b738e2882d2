from __future__ import annotations

import pytest

from dicom_ai.domain import Code, Finding, Priority
from dicom_ai.encode.describe import LO_MAX_CHARS, series_description
from tests.encode.encode_support import CONSOLIDATION, EFFUSION, findings, model_info, priority


def test_priority_comes_first_then_finding_model_and_demo_mark() -> None:
    model = model_info()
    assert series_description("SR", model, priority(), findings()) == "AI URGENT Consolidation 93% chest-xray-demo DEMO"
    assert (
        series_description("SC", model, priority(), findings())
        == "AI URGENT Consolidation 93% heatmap chest-xray-demo DEMO"
    )
    assert series_description("PM", model, priority(), findings()) == "AI URGENT Consolidation 93% map chest-xray-demo DEMO"


@pytest.mark.parametrize("kind", ["SR", "SC", "PM"])
def test_the_first_characters_a_viewer_shows_carry_priority_and_finding(kind: str) -> None:
    """OHIF's series list cuts descriptions after about 22 characters: what kind of object it is comes later."""
    text = series_description(kind, model_info(), priority(Priority.STAT), [Finding("Consolidation", CONSOLIDATION, 0.99, 0.5)])  # type: ignore[arg-type]
    assert text.startswith("AI STAT Consolidation 99%")


def test_no_positive_finding_and_a_clinical_model() -> None:
    text = series_description("SR", model_info(not_for_clinical_use=False), priority(Priority.ROUTINE),
                              findings(consolidation=0.2))
    assert text == "AI ROUTINE no finding chest-xray-demo"


def test_strongest_positive_label_over_all_images_and_a_count_of_the_others() -> None:
    several = [
        Finding("Consolidation", CONSOLIDATION, 0.61, 0.5),
        Finding("Consolidation", CONSOLIDATION, 0.88, 0.5),  # same label on a second image
        Finding("Pleural effusion", EFFUSION, 0.97, 0.5),
        Finding("Pleural effusion", EFFUSION, 0.30, 0.5),
    ]
    text = series_description("SR", model_info(), priority(Priority.STAT), several)
    assert text == "AI STAT Pleural effusion 97% +1 chest-xray-demo DEMO"


@pytest.mark.parametrize("kind", ["SR", "SC", "PM"])
def test_long_texts_are_cut_to_64_characters_keeping_priority_and_demo(kind: str) -> None:
    label = "Very long finding label that a site configured " * 2
    model = model_info(name="an-extremely-long-model-name-for-a-research-site-v2")
    finding = Finding(label, CONSOLIDATION, 0.9, 0.5)
    text = series_description(kind, model, priority(Priority.STAT), [finding])  # type: ignore[arg-type]
    assert len(text) <= LO_MAX_CHARS
    assert text.startswith("AI STAT Very long finding")
    assert text.endswith("DEMO")
    assert "90%" in text


def test_backslash_and_control_characters_are_removed() -> None:
    finding = Finding("Mass\\nodule\tleft", Code("4147007", "SCT", "Mass"), 0.8, 0.5)
    text = series_description("SR", model_info(), priority(), [finding])
    assert "\\" not in text and "\t" not in text
    assert "Mass/nodule left 80%" in text


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        series_description("PR", model_info(), priority(), findings())  # type: ignore[arg-type]
