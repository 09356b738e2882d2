"""The validation loop at scale: `dicom-ai evaluate` and `dicom-ai export seismometer` over a node database with
N judged predictions (target: 100,000 within 10 s each), as the commands run (a fresh process, the report's
PNGs and HTML, the parquet), with the in-process split (load from SQLite, metrics, report, export).

`turnaround_with_reports` times the chest CR turnaround without the HL7 listener, then with it while final
reports arrive (one per processed study, each deriving a truth and sending an assessment SR, and a steady
stream of unmatched ones).

The database is synthetic (bulk SQL, one CR study per prediction of the chest model over twelve weeks, 90 %
judged by a radiologist, mixed manufacturers, ages and sexes): the bench measures reading and computing, not
how the rows got there."""

from __future__ import annotations

import logging
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
from hl7.client import MLLPClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from bench.procs import BenchError
from bench import turnaround
from dicom_ai.config import Settings
from dicom_ai.demo.orthanc import free_port
from dicom_ai.infer.registry import monitoring_view
from dicom_ai.store import Stores
from dicom_ai.validation import (
    evaluate_model,
    export_for_seismometer,
    report_evaluation,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "dicom-ai")
MODEL, LABEL, VERSION, THRESHOLD = "chest-xray-demo", "Consolidation", "1.0.0", 0.35
JUDGED = 0.9  # share of the predictions a radiologist judged
WEEKS = 12
START = 1_760_000_000.0  # epoch of the first processed study
MANUFACTURERS = ("ACME", "Globex", "Initech", "Umbrella")
PREDICTIONS = 100_000  # the size (BENCH_SCALE scales it)
TARGET_S = 10.0  # each command over PREDICTIONS, start to exit


def fill(home: Path, n: int, seed: int = 14) -> float:
    """A node home whose database holds n processed chest studies with their findings, images and
    judgements; returns the seconds it took (not part of the measure)."""
    started = time.perf_counter()
    home.mkdir(parents=True, exist_ok=True)
    database = Settings(home=home).database_path
    Stores.open(database).close()  # the schema, by the node's own migrations
    rng = np.random.default_rng(seed)
    present = rng.random(n) < 0.3
    scores = np.clip(np.where(present, rng.beta(5, 2, n), rng.beta(2, 5, n)), 0.0, 1.0)
    when = START + np.sort(rng.random(n)) * WEEKS * 7 * 86400
    judged = rng.random(n)
    uids = [f"2.25.14{i:09d}" for i in range(n)]
    with sqlite3.connect(database) as db:
        db.executemany(
            "insert into studies (study_instance_uid, patient_id, accession_number, study_date, state, first_received_at,"
            " last_received_at, completed_at, processed_at, instance_count) values (?, ?, ?, '20251009', 'done', ?, ?, ?, ?, 1)",
            [(uid, f"P{i % (n // 3 + 1):07d}", f"A{i:09d}", t - 30, t - 20, t - 10, t) for i, (uid, t) in
             enumerate(zip(uids, when.tolist()))])
        db.executemany(
            "insert into findings (study_instance_uid, sop_instance_uid, model, model_version, label, code_value,"
            " code_scheme, probability, threshold, present, created_at) values (?, ?, ?, ?, ?, '95436008', 'SCT', ?, ?, ?, ?)",
            [(uid, f"{uid}.1", MODEL, VERSION, LABEL, s, THRESHOLD, int(s >= THRESHOLD), t)
             for uid, s, t in zip(uids, scores.tolist(), when.tolist())])
        db.executemany(
            "insert into analysed_images (sop_instance_uid, model, study_instance_uid, calling_aet, manufacturer,"
            " station_name, body_part, modality, photometric, rows, columns, pixel_spacing, kvp, field_strength,"
            " patient_sex, patient_age, analysed_at) values (?, ?, ?, ?, ?, ?, 'CHEST', 'CR', 'MONOCHROME2', 672, 672,"
            " 0.43, 120, null, ?, ?, ?)",
            [(f"{uid}.1", MODEL, uid, f"SITE{i % 3}", MANUFACTURERS[i % 4], f"CR{i % 7}", "FM"[i % 2],
              float(18 + (i * 7) % 75), t) for i, (uid, t) in enumerate(zip(uids, when.tolist()))])
        db.executemany(
            "insert into feedback (study_instance_uid, model, label, truth, source, by, comment, at)"
            " values (?, ?, ?, ?, 'radiologist', 'dr.bench', '', ?)",
            [(uid, MODEL, LABEL, "present" if p else "absent", t + 3600)
             for uid, p, j, t in zip(uids, present.tolist(), judged.tolist(), when.tolist()) if j < JUDGED])
    return time.perf_counter() - started


def _command(home: Path, *args: str) -> tuple[float, float]:
    """Seconds a `dicom-ai` command takes from start to exit (the process start included, as a user waits),
    and the CPU seconds it used (user + system): on a shared machine the second says what an idle one takes."""
    env = {**os.environ, "DICOM_AI_HOME": str(home), "DICOM_AI_MODELS_DIR": str(REPO / "models")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"dicom-ai {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(workdir: Path, n: int) -> dict[str, Any]:
    """Both commands over n predictions, then the same work in process, split by step."""
    home = workdir / f"validation-{n}"
    shutil.rmtree(home, ignore_errors=True)
    fill_s = fill(home, n)
    load_before = os.getloadavg()[0]
    evaluate_s, evaluate_cpu_s = _command(home, "evaluate", MODEL, "--out", str(home / "report-cli"))
    export_s, export_cpu_s = _command(home, "export", "seismometer", MODEL, "--out", str(home / "seismometer-cli"))
    settings = Settings(home=home, models_dir=REPO / "models")
    view = monitoring_view(settings.models_dir, MODEL)
    reference = view.references if view is not None else None
    stores = Stores.open(settings.database_path)
    try:
        t = time.perf_counter()
        predictions = stores.performance.predictions(MODEL)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        evaluated = evaluate_model(stores, settings, MODEL, reference)
        evaluate_model_s = time.perf_counter() - t
        t = time.perf_counter()
        report_evaluation(evaluated, home / "report", "bench", settings)
        report_s = time.perf_counter() - t
        t = time.perf_counter()
        exported = export_for_seismometer(stores, settings, MODEL, home / "seismometer")
        export_in_process_s = time.perf_counter() - t
    finally:
        stores.close()
    overall = evaluated.labels[LABEL].overall
    size = settings.database_path.stat().st_size
    shutil.rmtree(home, ignore_errors=True)
    return {"predictions": len(predictions), "judged": overall.judged, "fill_s": fill_s, "database_mb": size / 1e6,
            "evaluate_s": evaluate_s, "export_s": export_s, "evaluate_cpu_s": evaluate_cpu_s, "export_cpu_s": export_cpu_s,
            "load_average": load_before, "load_s": load_s,
            "evaluate_in_process_s": evaluate_model_s, "report_s": report_s,
            "export_in_process_s": export_in_process_s, "exported_rows": exported.rows, "auroc": overall.auroc,
            "target_s": TARGET_S}


def run(workdir: Path, n: int = PREDICTIONS) -> dict[str, Any]:
    return measure(workdir, n)


# --- turnaround while reports arrive ------------------------------------------------------------

REPORT_INTERVAL = 0.5  # s between unmatched reports (kept, rematched by the node) of the load stream


def _chest_with_accession(folder: Path, number: int) -> tuple[list[Path], str]:
    """The turnaround's chest CR with an accession number of its own, so a report can name it."""
    source = get_testdata_file("RG1_UNCR.dcm", download=False)
    if source is None:
        raise BenchError("RG1_UNCR.dcm is not installed (pip install pydicom-data)")
    ds = dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = f"BT{number:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path], str(ds.StudyInstanceUID)


def _oru(accession: str, control_id: str, text: str) -> str:
    return (f"MSH|^~\\&|RIS|HOSP|DICOM_AI|NODE|20240115120000||ORU^R01^ORU_R01|{control_id}|P|2.5\r"
            "PID|1||BENCH^^^HOSP\r"
            f"OBR|1||{accession}|71045^XR CHEST^CPT|||20240115093000||||||||||||||||||F\r"
            f"OBX|1|TX|IMP^Impression^L||{text}||||||F\r")


class ReportStream:
    """While a turnaround run goes on: a final report for each study as soon as the node has processed it
    (matched: a truth derived, an assessment SR encoded and sent to Orthanc), and an unmatched report every
    REPORT_INTERVAL (answered AE, kept, rematched by the node's job)."""

    def __init__(self, port: int, database: Path) -> None:
        self.port, self.database = port, database
        self.answers: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="report-stream", daemon=True)

    def __enter__(self) -> ReportStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _send(self, message: str) -> None:
        with MLLPClient("127.0.0.1", self.port) as client:
            answer = client.send_message(message).decode(errors="replace")
        code = answer.split("MSA|", 1)[1][:2] if "MSA|" in answer else "??"
        self.answers[code] = self.answers.get(code, 0) + 1

    def _run(self) -> None:
        reported: set[str] = set()
        number = 0
        while not self._stop.wait(REPORT_INTERVAL):
            number += 1
            try:
                self._send(_oru(f"NOSUCH{number:06d}", f"U{number}", "No focal consolidation."))
                if not self.database.exists():
                    continue
                with closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)) as db:
                    done = [row[0] for row in db.execute(
                        "select accession_number from studies where state = 'done' and accession_number like 'BT%'")]
                for accession in sorted(set(done) - reported):
                    self._send(_oru(accession, f"M{accession}", "Dense consolidation in the right lower lobe."))
                    reported.add(accession)
            except (OSError, sqlite3.Error) as exc:  # the node not listening yet, or the database busy: next round
                log.debug("report stream: %s", exc)


def turnaround_with_reports(workdir: Path, studies: int) -> dict[str, Any]:
    """The chest CR turnaround without the HL7 listener, then with it and a stream of reports arriving:
    the p50 ratio is what final reports and their assessment SRs add to a study's turnaround."""
    case = turnaround.Case("chest CR studies with an accession each", _chest_with_accession, {"kind": "chest CR"})
    quiet = turnaround.measure(workdir / "quiet", [case], studies)[0]
    port = free_port()
    with ReportStream(port, workdir / "reports" / "router" / "dicom-ai.sqlite") as stream:
        loaded = turnaround.measure(workdir / "reports", [case], studies, settings={"DICOM_AI_HL7_LISTEN": f"127.0.0.1:{port}"})[0]
    return {"studies": studies, "quiet_p50_s": quiet["p50_s"], "quiet_p95_s": quiet["p95_s"],
            "reports_p50_s": loaded["p50_s"], "reports_p95_s": loaded["p95_s"],
            "reports_over_quiet": loaded["p50_s"] / quiet["p50_s"], "answers": stream.answers}


if __name__ == "__main__":
    import json
    logging.basicConfig(level=logging.INFO)
    if len(sys.argv) > 1 and sys.argv[1] == "turnaround":
        count = int(sys.argv[2]) if len(sys.argv) > 2 else 10
        print(json.dumps(turnaround_with_reports(Path("/tmp/bench-validation-turnaround"), count), indent=2))
    else:
        size = int(sys.argv[1]) if len(sys.argv) > 1 else PREDICTIONS
        print(json.dumps(run(Path("/tmp/bench-validation"), size), indent=2))
