"""Scale: a database with many studies (synthetic rows through StudyStore.record_instance): the `studies` listing,
a replay of the rules over every study's header, and the database size; at two sizes to show growth."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pydicom import Dataset

from bench.stats import median
from dicom_ai.domain import Instance, Series, Study
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.route.matcher import route
from dicom_ai.store import Stores
from dicom_ai.domain import ReceivedInstance

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
MODALITIES = ("CR", "DX", "CT", "MR", "US")


def _header(number: int) -> Dataset:
    ds = Dataset()
    ds.Modality = MODALITIES[number % len(MODALITIES)]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1" if ds.Modality == "CR" else "1.2.840.10008.5.1.4.1.1.2"
    ds.BodyPartExamined = "CHEST" if number % 2 else "ABDOMEN"
    ds.ViewPosition = "PA"
    ds.Rows = ds.Columns = 2048
    ds.PatientID = f"P{number:06d}"
    return ds


def fill(database: Path, studies: int) -> float:
    """Insert `studies` one-instance studies; returns seconds (one durable transaction each, as the SCP does)."""
    store = Stores.open(database)
    started = time.perf_counter()
    try:
        for n in range(studies):
            store.studies.record_instance(ReceivedInstance(
                sop_instance_uid=f"2.25.{n}.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                series_instance_uid=f"2.25.{n}.2", study_instance_uid=f"2.25.{n}.1",
                modality=MODALITIES[n % len(MODALITIES)], transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=Path(f"/nonexistent/{n}.dcm"), size=500_000, calling_aet="BENCH", patient_id=f"P{n:06d}",
                study_date="20260101"))
    finally:
        store.close()
    return time.perf_counter() - started


def measure(workdir: Path, studies: int, repeats: int = 5) -> dict[str, Any]:
    folder = workdir / f"scale-{studies}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    database = folder / "dicom-ai.sqlite"
    fill_s = fill(database, studies)
    store = Stores.open(database)
    try:
        listing = []
        filtered = []
        for _ in range(repeats):
            t = time.perf_counter(); store.reports.studies(limit=50); listing.append(time.perf_counter() - t)
            t = time.perf_counter(); store.reports.studies(limit=50, state="receiving"); filtered.append(time.perf_counter() - t)
        rules = RuleWatcher(REPO / "rules").ruleset
        replay = []
        for _ in range(max(1, repeats // 2)):
            t = time.perf_counter()
            matched = 0
            for row in store.database.query("select sop_instance_uid, sop_class_uid, series_instance_uid, study_instance_uid,"
                                    " path from instances"):
                number = int(row["study_instance_uid"].split(".")[2])
                instance = Instance(row["sop_instance_uid"], row["sop_class_uid"], row["series_instance_uid"],
                                    row["study_instance_uid"], Path(row["path"]))
                study = Study(row["study_instance_uid"], (Series(row["series_instance_uid"], (instance,), _header(number)),))
                matched += bool(route(study, rules))
            replay.append(time.perf_counter() - t)
    finally:
        store.close()
    size = sum(p.stat().st_size for p in folder.iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    return {"studies": studies, "fill_s": fill_s, "fill_studies_per_s": studies / fill_s,
            "studies_query_ms": median(listing) * 1000, "studies_state_query_ms": median(filtered) * 1000,
            "rule_replay_s": median(replay), "rule_replay_matched": matched, "database_mb": size / 1e6}


def run(workdir: Path, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    return [measure(workdir, n) for n in sizes]


if __name__ == "__main__":
    import json
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(Path("/tmp/bench-scale"), (200, 1000)), indent=2))
