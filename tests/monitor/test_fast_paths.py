"""The fast paths of evaluate, drift and export (rows read as tuples, ISO weeks once per day, groups as codes
per distinct subgroups tuple, pseudonyms once per distinct value) against a straightforward per-row
computation on a random node database: the same predictions, truths, weeks, subgroups and values."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicom_ai.domain import CATEGORICAL_PROPERTIES, NUMERIC_PROPERTIES, SCORE_PREFIX, Prediction, Truth, TruthSource
from dicom_ai.monitor.drift import weekly_values
from dicom_ai.monitor.performance import evaluate, iso_week
from dicom_ai.store import Stores
from dicom_ai.store.performance import SUBGROUPS, age_band
from dicom_ai.store.secret import pseudonym, pseudonyms

MODEL = "m"
LABELS = ("Mass", "Nodule")
DAY = 86400.0
START = 1_703_894_400.0  # 2023-12-30 (UTC), a Saturday: the weeks cross a new year (2023-W52, 2024-W01)


def fill(database: Path, studies: int, seed: int) -> None:
    """Random studies with one or two analysed images, two labels, and feedback revised or derived from reports;
    a tenth of the moments lie within a millisecond of midnight UTC (or on it)."""
    rng = np.random.default_rng(seed)
    with sqlite3.connect(database) as db:
        for i in range(studies):
            uid = f"2.25.{i}"
            when = START + float(rng.random()) * 20 * DAY
            if rng.random() < 0.1:
                when = START + int(rng.integers(1, 20)) * DAY + float(rng.choice([0.0, -2e-7, 2e-7, -4e-4, 4e-4, -0.5]))
            db.execute("insert into studies (study_instance_uid, patient_id, accession_number, state, first_received_at,"
                       " last_received_at, processed_at, instance_count) values (?, ?, ?, 'done', ?, ?, ?, 1)",
                       [uid, f"P{i % 400}", f"A{i}" if rng.random() < 0.8 else None, when - 9, when - 5, when])
            images = 1 + int(rng.random() < 0.3)
            for k in range(images):
                sop = f"{uid}.{k}"
                for label in LABELS:
                    if label == "Nodule" and rng.random() < 0.2:
                        continue
                    db.execute("insert into findings (study_instance_uid, sop_instance_uid, model, model_version, label,"
                               " code_value, code_scheme, probability, threshold, present, created_at)"
                               " values (?, ?, ?, ?, ?, 'x', 'SCT', ?, 0.4, 0, ?)",
                               [uid, sop, MODEL, f"1.{k}", label, float(rng.random()), when])
                db.execute(
                    "insert into analysed_images (sop_instance_uid, model, study_instance_uid, calling_aet, manufacturer,"
                    " station_name, body_part, modality, photometric, rows, columns, pixel_spacing, kvp, field_strength,"
                    " patient_sex, patient_age, analysed_at) values (?, ?, ?, ?, ?, ?, ?, 'CR', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [sop, MODEL, uid, str(rng.choice(["A", "B", "C"])), rng.choice(["ACME", "Globex", None]),
                     rng.choice(["CR1", "CR2", ""]), "CHEST", rng.choice(["MONOCHROME2", "MONOCHROME1", None]),
                     int(rng.choice([512, 1024])), 512, rng.choice([0.1, 0.2, None]), rng.choice([80.0, 120.0, None]),
                     None, rng.choice(["F", "M", None]),
                     None if rng.random() < 0.1 else float(rng.integers(0, 95)), when - 1 + k * float(rng.random())])
            for label in LABELS:
                for _ in range(int(rng.integers(0, 3))):
                    db.execute("insert into feedback (study_instance_uid, model, label, truth, source, by, comment, at)"
                               " values (?, ?, ?, ?, ?, 'dr', '', ?)",
                               [uid, MODEL, label, str(rng.choice(["present", "absent", "uncertain"])),
                                str(rng.choice(["radiologist", "report"])), when + 60])


def per_row_predictions(database: Path) -> list[Prediction]:
    """The predictions as one would compute them a row at a time."""
    db = sqlite3.connect(database)
    db.row_factory = sqlite3.Row
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for row in db.execute("select * from findings where model = ?", [MODEL]):
        key = (row["study_instance_uid"], row["label"])
        found = best.setdefault(key, {"score": row["probability"], "threshold": row["threshold"],
                                      "version": row["model_version"]})
        found["score"] = max(found["score"], row["probability"])
        found["threshold"] = max(found["threshold"], row["threshold"])
        found["version"] = max(found["version"], row["model_version"])
    latest: dict[tuple[str, str, str], str] = {}
    for row in db.execute("select * from feedback where model = ? order by id", [MODEL]):
        latest[(row["study_instance_uid"], row["label"], row["source"])] = row["truth"]
    first: dict[str, sqlite3.Row] = {}
    for row in db.execute("select * from analysed_images where model = ? order by analysed_at, sop_instance_uid",
                          [MODEL]):
        first.setdefault(row["study_instance_uid"], row)
    studies = {row["study_instance_uid"]: row for row in db.execute("select * from studies")}
    out = []
    for (study, label), found in best.items():
        s = studies[study]
        truth, source = None, None
        for which in ("radiologist", "report"):
            if (study, label, which) in latest:
                truth, source = Truth(latest[(study, label, which)]), TruthSource(which)
                break
        image = first.get(study)
        subgroups = () if image is None else tuple(zip(SUBGROUPS, (
            image["patient_sex"] or "", age_band(image["patient_age"]), image["manufacturer"] or "",
            image["station_name"] or "", image["body_part"] or "", image["calling_aet"] or "")))
        out.append(Prediction(study, MODEL, found["version"], label, found["score"], found["threshold"],
                              s["processed_at"], truth, source, s["patient_id"] or "", s["accession_number"] or "",
                              subgroups))
    db.close()
    return sorted(out, key=lambda p: (p.predicted_at, p.study_instance_uid, p.label))


def counts(rows: list[Prediction]) -> tuple[int, int, int, int, int, int]:
    """(studies, uncertain, tp, fp, tn, fn) of a set of one label's predictions, a row at a time."""
    tp = sum(p.truth == Truth.PRESENT and p.called for p in rows)
    fp = sum(p.truth == Truth.ABSENT and p.called for p in rows)
    tn = sum(p.truth == Truth.ABSENT and not p.called for p in rows)
    fn = sum(p.truth == Truth.PRESENT and not p.called for p in rows)
    return len(rows), sum(p.truth == Truth.UNCERTAIN for p in rows), tp, fp, tn, fn


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    database = tmp_path_factory.mktemp("fast") / "db.sqlite"
    Stores.open(database).close()
    fill(database, 3000, seed=14)
    return Stores.open(database)


def test_predictions_match_a_per_row_reading(node: Stores) -> None:
    found = node.performance.predictions(MODEL)
    expected = per_row_predictions(node.database.path)
    assert len(found) == len(expected) > 5000
    differing = [(got, wanted) for got, wanted in zip(found, expected) if got != wanted]
    assert not differing, f"{len(differing)} differ, the first: {differing[0]}"
    assert {p.truth_source for p in found} == {None, TruthSource.RADIOLOGIST, TruthSource.REPORT}


def test_weeks_and_subgroups_match_a_per_row_assignment(node: Stores) -> None:
    predictions = node.performance.predictions(MODEL)
    evaluations = evaluate(predictions, rounds=5)
    assert set(evaluations) == set(LABELS)
    edges = [p for p in predictions if min(p.predicted_at % DAY, DAY - p.predicted_at % DAY) < 1e-3]
    assert len(edges) > 100  # the moments iso_week itself must place
    for label, evaluation in evaluations.items():
        rows = [p for p in predictions if p.label == label]
        by_week: dict[str, list[Prediction]] = defaultdict(list)
        for p in rows:
            by_week[iso_week(p.predicted_at)].append(p)
        assert list(evaluation.weeks) == sorted(by_week)
        assert {"2023-W52", "2024-W01", "2024-W02"} <= set(by_week)
        for week, performance in evaluation.weeks.items():
            got = (performance.studies, performance.uncertain, performance.tp, performance.fp, performance.tn,
                   performance.fn)
            assert got == counts(by_week[week]), (label, week)
        for name in SUBGROUPS:
            by_value: dict[str, list[Prediction]] = defaultdict(list)
            for p in rows:
                by_value[p.subgroup(name) or "(unknown)"].append(p)
            groups = evaluation.subgroups[name]
            assert set(groups) == set(by_value), (label, name)
            for value, performance in groups.items():
                got = (performance.studies, performance.uncertain, performance.tp, performance.fp, performance.tn,
                       performance.fn)
                assert got == counts(by_value[value]), (label, name, value)


def test_weekly_drift_values_match_a_per_row_grouping(node: Stores) -> None:
    predictions = node.performance.predictions(MODEL)
    images = node.performance.images(MODEL)
    expected: dict[str, dict[str, list[float | str]]] = defaultdict(lambda: defaultdict(list))
    for p in predictions:
        expected[iso_week(p.predicted_at)][f"{SCORE_PREFIX}{p.label}"].append(p.score)
    for when, image in images:
        for name in NUMERIC_PROPERTIES:
            if getattr(image, name) is not None:
                expected[iso_week(when)][name].append(float(getattr(image, name)))
        for name in CATEGORICAL_PROPERTIES:
            expected[iso_week(when)][name].append(str(getattr(image, name) or ""))
    wanted = {week: dict(values) for week, values in expected.items()}
    for source in (node.performance.image_columns(MODEL), images):
        got = weekly_values(predictions, source)
        assert list(got) == sorted(wanted)
        differing = [(week, name) for week in wanted for name in {*wanted[week], *got[week]}
                     if got[week].get(name) != wanted[week].get(name)]
        assert not differing, f"values differ in {differing[:5]}"


def test_pseudonyms_of_many_values_are_each_values_pseudonym() -> None:
    values = ["P1", "P2", "P1", "", "Müller^Ä", "P2"]
    assert pseudonyms(b"k" * 32, "patient", values) == [pseudonym(b"k" * 32, "patient", v) for v in values]
