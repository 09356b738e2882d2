"""The report folder: a PNG per figure (ROC, calibration, scores over time, subgroups, drift), an HTML page
that shows every one of them, and metrics.json with the same numbers as the evaluation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from dicom_ai.domain import DriftCheck, Prediction, Truth
from dicom_ai.monitor.performance import evaluate
from dicom_ai.monitor.report import roc_points, summary_table, write_report

MONDAY = 1_700_438_400.0


def predictions(n: int = 120) -> list[Prediction]:
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        truth = [Truth.PRESENT, Truth.ABSENT, None][i % 3]
        score = float(np.clip(rng.normal(0.7 if truth == Truth.PRESENT else 0.3, 0.15), 0, 1))
        rows.append(Prediction(f"1.{i}", "m", "1", "Lung consolidation", score, 0.5, MONDAY + (i % 4) * 7 * 86400, truth,
                               subgroups=(("sex", "FM"[i % 2]), ("manufacturer", "ACME"))))
    return rows


def test_the_folder_holds_every_figure_the_page_shows(tmp_path: Path) -> None:
    rows = predictions()
    evaluations = evaluate(rows, rounds=100)
    drift = [DriftCheck("m", "2023-W47", "rows", 60, 0.02, 0.9, False), DriftCheck("m", "2023-W48", "rows", 60, 4.6, 1e-9, True)]
    files = write_report(tmp_path / "report", model="m", title="m: live", predictions=rows, evaluations=evaluations,
                         drift=drift, psi_threshold=0.25, notes=["NOT FOR CLINICAL USE"])
    assert sorted(files.figures) == ["calibration-lung-consolidation", "drift", "roc-lung-consolidation",
                                     "scores-lung-consolidation", "subgroups-lung-consolidation"]
    page = files.html.read_text()
    for path in files.figures.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 100
        assert f"src='{path.name}'" in page
    assert "NOT FOR CLINICAL USE" in page and "DRIFT" in page and "2023-W48" in page
    metrics = json.loads(files.metrics.read_text())
    overall = evaluations["Lung consolidation"].overall
    assert metrics["labels"]["Lung consolidation"]["overall"]["confusion"] == {
        "tp": overall.tp, "fp": overall.fp, "tn": overall.tn, "fn": overall.fn}
    assert metrics["predictions"] == 120 and metrics["drift"][1]["flagged"] is True
    table = summary_table(evaluations)
    assert re.search(r"AUROC 0\.\d{3} \(0\.\d{3}-0\.\d{3}\)", table) and "confusion: TP" in table


def test_roc_points_run_from_the_origin_to_one_one() -> None:
    fpr, tpr = roc_points(np.array([0.9, 0.8, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0, 0]))
    assert list(fpr) == [0.0, 0.0, 1 / 3, 2 / 3, 1.0] and list(tpr) == [0.0, 0.5, 1.0, 1.0, 1.0]
