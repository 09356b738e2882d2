"""Drift checks over a real database: the node's job keeps each week's outcome, a flagged week becomes a
`dicom-ai status` problem naming the model and the variables (and an audit event), an undrifted week does not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from dicom_ai.cli import main
from dicom_ai.config import Settings
from dicom_ai.domain import CategoricalReference, NumericReference
from dicom_ai.metrics import categorical_reference, numeric_reference
from dicom_ai.store import Stores
from dicom_ai.store.health import node_health
from dicom_ai.validation import check_drift
from tests.validation_support import MODEL, processed_study


def references() -> dict[str, dict[str, NumericReference | CategoricalReference]]:
    scores = numeric_reference(np.linspace(0.05, 0.95, 200))
    rows = numeric_reference([672.0] * 200)
    maker = categorical_reference(["ACME"] * 200)
    return {MODEL: {
        "score:Consolidation": NumericReference(200, tuple(scores["edges"]), tuple(scores["proportions"]),
                                                tuple(scores["quantiles"])),
        "rows": NumericReference(200, tuple(rows["edges"]), tuple(rows["proportions"]), tuple(rows["quantiles"])),
        "manufacturer": CategoricalReference(200, tuple(maker["proportions"].items())),
    }}


def test_a_drifted_week_becomes_a_status_problem_and_an_undrifted_one_does_not(
        tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(drift_min_cases=12, home=tmp_path)
    stores = Stores.open(settings.database_path)
    for i in range(12):  # like the reference: spread scores, 672 rows, one manufacturer
        processed_study(stores, settings, accession=f"U{i}", probability=0.05 + 0.9 * i / 11)
    checks = check_drift(stores, settings, references())
    assert {c.variable for c in checks} == {"score:Consolidation", "rows", "manufacturer"}
    assert not any(c.flagged for c in checks)
    assert node_health(stores.reports, tmp_path, None).ok

    for i in range(12):  # another scanner: other rows, another manufacturer
        processed_study(stores, settings, accession=f"D{i}", probability=0.05 + 0.9 * i / 11, rows=448,
                        manufacturer="OTHER")
    checks = check_drift(stores, settings, references())
    assert {c.variable for c in checks if c.flagged} == {"rows", "manufacturer"}
    health = node_health(stores.reports, tmp_path, None)
    [problem] = [p for p in health.attention if "drifted" in p]
    assert problem.startswith(f"model {MODEL} drifted from its validation reference in ")
    assert "rows PSI" in problem and "manufacturer PSI" in problem and f"dicom-ai evaluate {MODEL}" in problem
    assert [e["kind"] for e in stores.reports.events() if e["kind"] == "drift_flagged"] == ["drift_flagged"] * 2
    status = CliRunner().invoke(main, ["status"], env={"DICOM_AI_HOME": str(tmp_path)})
    assert status.exit_code == 1 and f"! model {MODEL} drifted" in status.output
