"""The rules format is documented: a field or operator missing from docs/rules.md fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_ai.route.matcher import NON_IMAGE_MODALITIES
from dicom_ai.route.rules import DERIVED_STUDY_KEYWORDS, OPERATORS, Completion, PriorityPolicy, Rule

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


@pytest.mark.parametrize(
    "name",
    [
        *OPERATORS,
        *Rule.model_fields,
        *PriorityPolicy.model_fields,
        *Completion.model_fields,
        *DERIVED_STUDY_KEYWORDS,
        *NON_IMAGE_MODALITIES,
    ],
)
def test_documented(name: str) -> None:
    assert f"`{name}`" in DOCS.read_text(encoding="utf-8"), (
        f"docs/rules.md does not mention `{name}`"
    )


def test_shipped_rule_points_to_the_docs() -> None:
    shipped = Path(__file__).resolve().parents[2] / "rules" / "chest-radiograph.yaml"
    assert "docs/rules.md" in shipped.read_text(encoding="utf-8")
