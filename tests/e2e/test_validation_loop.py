"""The clinical validation loop end to end, with a real Orthanc, the installed node, real dcmtk, a real MLLP
client, dciodvfy and the real seismometer: phantom chest studies with known truth go through Orthanc to the
node; radiologists judge a third by `dicom-ai feedback` and the RIS reports the rest over MLLP; `evaluate`
gives the numbers a direct computation gives; seismometer loads the export with the same AUROC; the
assessment SRs arrive in Orthanc, dciodvfy-clean; a drifted batch (the writer enlarging four times instead of
three times) raises the drift problem that the undrifted batch did not. Bad input on the way: a report for
an accession not yet known is answered AE and matched once the study arrives, malformed HL7 gets AR, and
feedback for an unknown study or finding is refused naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hl7.client import MLLPClient

from dicom_ai.config import Settings
from dicom_ai.domain import Truth
from dicom_ai.store import Stores
from dicom_ai.train.phantom_dicom import write_chest_cr_study
from dicom_ai.validation import evaluate_model
from tests.conftest import HttpReceiver, MllpListener, free_port, require_binary
from tests.e2e.conftest import RouterProcess, wait_for
from tests.e2e.orthanc_server import OrthancServer, storescu
from tests.seismometer_support import load_with_seismometer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
CLI = str(Path(sys.executable).parent / "dicom-ai")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "validation-report"  # the evaluate report of this run
MODEL, LABEL = "chest-xray-demo", "Consolidation"
JUDGED = 22  # 11 with a consolidation, 11 without: enough of each class for an AUROC
FIRST_SEED = 71_000


class Loop:
    """A stack of its own (its drift must not see the other e2e tests' studies)."""

    def __init__(self, root: Path) -> None:
        for tool in ("storescu", "dciodvfy", "Orthanc"):
            require_binary(tool)
        self.root = root
        self.webhook, self.ris = HttpReceiver(failures=0), MllpListener()
        self.hl7_port = free_port()
        router_port = free_port()
        self.orthanc = OrthancServer(root / "orthanc", router_aet="DICOM_AI", router_port=router_port, stable_age=1)
        self.orthanc.start()
        try:
            self.router = RouterProcess(root / "router", router_port, self.orthanc, self.webhook.url, self.ris.port,
                                        DICOM_AI_HL7_LISTEN=f"127.0.0.1:{self.hl7_port}", DICOM_AI_DRIFT_MIN_CASES="10",
                                        DICOM_AI_DRIFT_INTERVAL="1")
        except Exception:
            self.orthanc.stop()
            raise
        self.env = {**os.environ, "DICOM_AI_HOME": str(self.router.home)}

    def close(self) -> None:
        self.router.stop()
        self.orthanc.stop()
        self.webhook.stop()
        self.ris.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *args], env=self.env, capture_output=True, text=True, timeout=300, check=False)

    def send(self, seed: int, finding: bool, enlarge: int = 3) -> str:
        files = write_chest_cr_study(self.root / "in" / str(seed), seed, finding, patient_id=f"VAL{seed}",
                                     enlarge=enlarge)
        storescu(files, self.orthanc.dicom_port)
        return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def stores(self) -> Stores:
        return Stores.open(self.router.home / "dicom-ai.sqlite")

    def done(self, studies: list[str]) -> bool:
        rows = self.stores().database.query(
            f"select count(*) as n from studies where state = 'done' and study_instance_uid in ({','.join('?' * len(studies))})",
            studies)
        return rows[0]["n"] == len(studies)

    def report(self, message: str) -> str:
        with MLLPClient("127.0.0.1", self.hl7_port) as client:
            return client.send_message(message).decode()


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    stack = Loop(tmp_path_factory.mktemp("validation-loop"))
    yield stack
    stack.close()
    assert "Traceback" not in stack.router.log(), stack.router.log()[-4000:]


def oru(accession: str, text: str, control_id: str) -> str:
    return (f"MSH|^~\\&|RIS|HOSP|DICOM_AI|NODE|20240115120000||ORU^R01^ORU_R01|{control_id}|P|2.5\r"
            "PID|1||UNUSED^^^HOSP||Doe^Jane\r"
            f"OBR|1|PL-{accession}|{accession}|71045^XR CHEST^CPT|||20240115093000|||||||||||||||20240115110000||CR|F\r"
            f"OBX|1|TX|IMP^Impression^L||{text}||||||F\r")


def accession(seed: int) -> str:
    return f"SYN{seed % 10**9:09d}"  # what write_chest_cr_study writes


def test_the_validation_loop(loop: Loop, tmp_path: Path) -> None:
    truth = {FIRST_SEED + i: i % 2 == 0 for i in range(JUDGED)}
    studies = {seed: loop.send(seed, finding) for seed, finding in truth.items()}
    late_seed = FIRST_SEED + JUDGED  # its report comes first
    wait_for("the first batch processed", lambda: loop.done(list(studies.values())), 420, loop.router)

    # Bad input first: a report for an accession the node does not know yet, malformed HL7.
    early = loop.report(oru(accession(late_seed), "Dense consolidation in the left lower lobe.", "LATE"))
    assert f"MSA|AE|LATE|no study with accession {accession(late_seed)} yet: kept, matched when it arrives" in early
    assert "MSA|AR||not HL7" in loop.report("this is not an HL7 message")
    refused = loop.cli("feedback", "1.2.3.4.5", "--model", MODEL, "--finding", LABEL, "--truth", "present")
    assert refused.returncode == 1 and refused.stderr.strip() == "Error: no study 1.2.3.4.5 on this node (see `dicom-ai studies`)"
    first = studies[FIRST_SEED]
    refused = loop.cli("feedback", first, "--model", MODEL, "--finding", "Effusion", "--truth", "present")
    assert refused.returncode == 1 and f"model '{MODEL}' has no finding 'Effusion' on study {first}" in refused.stderr

    # Ground truth: a third by radiologists on the command line (both truths), the rest by final reports over MLLP.
    seeds = sorted(truth)
    by_cli = seeds[::3]
    for seed in by_cli:
        done = loop.cli("feedback", studies[seed], "--model", MODEL, "--finding", LABEL, "--truth",
                        "present" if truth[seed] else "absent", "--by", "dr.lee", "--comment", "e2e")
        assert done.returncode == 0, done.stderr
    for seed in (s for s in seeds if s not in by_cli):
        text = "Dense consolidation in the right lower lobe." if truth[seed] else "No focal consolidation. Clear lungs."
        answer = loop.report(oru(accession(seed), text, f"R{seed}"))
        verdict = "present" if truth[seed] else "absent"
        said = f"{LABEL} {verdict} ({MODEL}); study {studies[seed]}"[:80]  # MSA-3 holds 80 characters
        assert f"MSA|AA|R{seed}|{said}\r" in answer, answer

    # The late study arrives: the kept report is matched by the node.
    late = loop.send(late_seed, True)
    truth[late_seed], studies[late_seed] = True, late
    wait_for("the kept report matched to the late study", lambda: not loop.stores().feedback.pending_reports()
             and loop.stores().feedback.effective(late, MODEL), 240, loop.router)
    assert loop.stores().feedback.effective(late, MODEL)[LABEL].truth == Truth.PRESENT
    sources = {(row["study_instance_uid"], row["source"]) for row in loop.stores().database.query(
        "select study_instance_uid, source from feedback where model = ?", [MODEL])}
    assert sources == {(studies[s], "radiologist" if s in by_cli else "report") for s in truth}

    # evaluate: the numbers a direct computation gives.
    stores = loop.stores()
    scores = {seed: max(row["probability"] for row in stores.reports.findings_of(uid) if row["model"] == MODEL)
              for seed, uid in studies.items()}
    threshold = stores.database.query("select max(threshold) as t from findings where model = ?", [MODEL])[0]["t"]
    tp = sum(scores[s] >= threshold and truth[s] for s in truth)
    fn = sum(scores[s] < threshold and truth[s] for s in truth)
    tn = sum(scores[s] < threshold and not truth[s] for s in truth)
    fp = sum(scores[s] >= threshold and not truth[s] for s in truth)
    pairs = [(scores[p] > scores[n]) + 0.5 * (scores[p] == scores[n]) for p in truth if truth[p] for n in truth if not truth[n]]
    direct_auroc = sum(pairs) / len(pairs)
    report_dir = tmp_path / "report"
    evaluated = loop.cli("evaluate", MODEL, "--out", str(report_dir), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    overall = json.loads(evaluated.stdout)["labels"][LABEL]["overall"]
    assert overall["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert overall["sensitivity"]["value"] == round(tp / (tp + fn), 4)
    assert overall["specificity"]["value"] == round(tn / (tn + fp), 4)
    assert overall["auroc"] == round(direct_auroc, 4)
    for figure in ("roc", "calibration", "scores", "subgroups"):
        assert (report_dir / f"{figure}-consolidation.png").stat().st_size > 10_000
    # Kept for people to look at (git ignores the folder), as the OHIF and console screenshots are.
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    shutil.copytree(report_dir, ARTIFACTS)
    ours = evaluate_model(stores, Settings(home=loop.router.home), MODEL, None).labels[LABEL].overall

    # The seismometer export, loaded by seismometer: the same AUROC.
    export_dir = tmp_path / "seismometer"
    exported = loop.cli("export", "seismometer", MODEL, "--out", str(export_dir))
    assert exported.returncode == 0, exported.stderr
    assert f"wrote {len(truth)} judged study(ies)" in exported.stdout
    loaded = load_with_seismometer(export_dir)
    assert loaded["rows"] == len(truth) and loaded["positives"] == sum(truth.values())
    assert loaded["auroc"] == pytest.approx(ours.auroc, abs=1e-12) == pytest.approx(direct_auroc, abs=1e-12)

    # Every assessment SR reached Orthanc and passes dciodvfy.
    assessments = stores.database.query("select sop_instance_uid from results where kind = 'AS' and superseded_by is null")
    assert len(assessments) == len(truth)

    def in_orthanc() -> list[str] | None:
        found = []
        for row in assessments:
            hits = json.loads(loop.orthanc.rest("POST", "/tools/lookup", row["sop_instance_uid"]))
            found += [h["ID"] for h in hits if h["Type"] == "Instance"]
        return found if len(found) == len(assessments) else None

    for orthanc_id in wait_for("the assessment SRs in Orthanc", in_orthanc, 240, loop.router):
        path = tmp_path / f"{orthanc_id}.dcm"
        path.write_bytes(loop.orthanc.rest("GET", f"/instances/{orthanc_id}/file"))
        checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert not errors, errors

    # Drift: the undrifted batch is checked and not flagged; another writer setting is.
    def checked_rows() -> list[dict] | None:  # type: ignore[type-arg]
        rows = loop.stores().database.query("select * from drift_checks where variable = 'rows'")
        return rows if rows and rows[0]["cases"] >= len(truth) else None

    assert not wait_for("the drift check of the first batch", checked_rows, 60, loop.router)[0]["flagged"]
    status = loop.cli("status")
    assert "drifted" not in status.stdout, status.stdout
    drifted = [loop.send(FIRST_SEED + 100 + i, i % 2 == 0, enlarge=4) for i in range(12)]
    wait_for("the drifted batch processed", lambda: loop.done(drifted), 420, loop.router)

    def drift_status() -> str | None:
        shown = loop.cli("status").stdout
        return shown if f"! model {MODEL} drifted" in shown else None

    shown = wait_for("the drift problem in dicom-ai status", drift_status, 60, loop.router)
    assert "rows PSI" in shown and "columns PSI" in shown and f"dicom-ai evaluate {MODEL}" in shown
    assert f"model {MODEL} drifted in" in loop.router.log()  # and logged
    assert np.isfinite(ours.auroc or float("nan"))
