"""The seismometer export: typed parquet with pseudonyms (never a raw PatientID or accession), one score and
one 0/1 truth column per label, cohorts; loaded by the real seismometer 0.5, whose AUROC equals ours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dicom_ai.domain import Prediction, Truth
from dicom_ai.metrics import auroc
from dicom_ai.monitor.performance import evaluate
from dicom_ai.monitor.seismometer import ExportError, export_seismometer
from tests.seismometer_support import load_with_seismometer

SECRET = bytes(range(32))


def predictions(n: int = 80) -> list[Prediction]:
    rng = np.random.default_rng(5)
    rows = []
    for i in range(n):
        truth = [Truth.PRESENT, Truth.ABSENT, Truth.ABSENT, None, Truth.UNCERTAIN][i % 5]
        score = float(np.clip(rng.normal(0.65 if truth == Truth.PRESENT else 0.35, 0.2), 0, 1))
        rows.append(Prediction(f"1.2.{i}", "chest-xray-demo", "1.0.0", "Consolidation", score, 0.35, 1.7e9 + 3600 * i,
                               truth, patient_id=f"PAT{i % 30:04d}", accession_number=f"ACC{i:05d}",
                               subgroups=(("sex", "FM"[i % 2]), ("age band", "40-64"), ("manufacturer", "ACME"),
                                          ("station name", "CR1"), ("body part", "CHEST"), ("calling AE", "PACS"))))
    return rows


def test_the_export_is_typed_and_pseudonymised(tmp_path: Path) -> None:
    rows = predictions()
    export = export_seismometer(tmp_path / "out", "chest-xray-demo", rows, secret=SECRET,
                                thresholds={"Consolidation": 0.3494})
    assert (export.rows, export.left_out) == (48, 32)  # present/absent only: unjudged and uncertain left out
    table = pq.read_table(tmp_path / "out" / "predictions.parquet")
    assert table.schema.field("PredictionTime").type == pa.timestamp("ns")
    assert table.schema.field("consolidation_score").type == pa.float64()
    assert table.schema.field("consolidation_Value").type == pa.int64()
    assert set(table.column("consolidation_Value").to_pylist()) == {0, 1}
    assert {"sex", "age_band", "manufacturer", "station_name", "body_part", "calling_ae"} <= set(table.column_names)
    raw = b"".join(p.read_bytes() for p in export.files)
    assert b"PAT00" not in raw and b"ACC000" not in raw and b"1.2.1" not in raw  # no identifiers leave the node
    entities = table.column("entity_id").to_pylist()
    assert all(e.startswith("P-") and len(e) == 26 for e in entities) and len(set(entities)) < len(entities)
    again = export_seismometer(tmp_path / "again", "chest-xray-demo", rows, secret=SECRET, thresholds={})
    assert pq.read_table(again.folder / "predictions.parquet").column("entity_id").to_pylist() == entities
    other = export_seismometer(tmp_path / "other", "chest-xray-demo", rows, secret=b"x" * 32, thresholds={})
    assert not set(pq.read_table(other.folder / "predictions.parquet").column("entity_id").to_pylist()) & set(entities)
    usage = yaml.safe_load((tmp_path / "out" / "usage_config.yml").read_text())["data_usage"]
    assert usage["primary_target"] == "consolidation" and usage["events"][0]["usage"] == "target"
    assert usage["censor_min_count"] >= 10
    dictionary = yaml.safe_load((tmp_path / "out" / "dictionary.yml").read_text())["predictions"]
    assert {item["name"]: item["dtype"] for item in dictionary}["PredictionTime"] == "datetime64[ns]"


def test_nothing_judged_is_refused_with_the_reason(tmp_path: Path) -> None:
    unjudged = [Prediction("1.1", "m", "1", "Mass", 0.5, 0.5, 1.7e9)]
    with pytest.raises(ExportError, match="none of the 1 studies of model m has a present or absent truth"):
        export_seismometer(tmp_path, "m", unjudged, secret=SECRET, thresholds={})


def test_seismometer_loads_the_export_and_its_auroc_equals_ours(tmp_path: Path) -> None:
    rows = predictions()
    export = export_seismometer(tmp_path / "out", "chest-xray-demo", rows, secret=SECRET,
                                thresholds={"Consolidation": 0.3494})
    loaded = load_with_seismometer(export.folder)
    ours = evaluate(rows, rounds=50)["Consolidation"].overall
    judged = [r for r in rows if r.truth in (Truth.PRESENT, Truth.ABSENT)]
    direct = auroc(np.array([r.score for r in judged]), np.array([r.truth == Truth.PRESENT for r in judged]))
    assert loaded["version"].startswith("0.5.")
    assert (loaded["rows"], loaded["positives"]) == (48, ours.tp + ours.fn)
    assert (loaded["output"], loaded["target"]) == ("consolidation_score", "consolidation_Value")
    assert loaded["auroc"] == pytest.approx(ours.auroc, abs=1e-12) == pytest.approx(direct, abs=1e-12)
    assert loaded["modelname"] == "chest-xray-demo" and loaded["thresholds"] == [0.3494]
    assert {"Sex", "Age band", "Manufacturer", "Station name", "Body part", "Calling AE"} <= set(loaded["cohorts"])
    assert loaded["dtypes"]["PredictionTime"] == "datetime64[ns]"
