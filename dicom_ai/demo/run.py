"""`dicom-ai demo`: a PACS (a real Orthanc from orthanc/), the node, and a handful of studies, on this machine.

What a newcomer needs to see the product work in a few minutes: Orthanc forwards each stable study to
the node, the node sends back an SR, heatmaps and a priority, and the demo prints where to look, with
the studies in reading order. Everything listens on loopback; Ctrl-C stops it all.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_ai.config import Peer
from dicom_ai.demo.orthanc import ORTHANC_BINARY, OrthancServer, free_port
from dicom_ai.send.cstore import send_files
from dicom_ai.store.accounts import Accounts, Role
from dicom_ai.store.database import Database
from dicom_ai.train import phantom_dicom

log = logging.getLogger(__name__)

NODE_AET = "DICOM_AI"
START_TIMEOUT = 90.0  # seconds for the node to load its models and listen
RESULTS_TIMEOUT = 300.0  # seconds for every study's results to be back in Orthanc
STABLE_S = 2  # Orthanc's StableAge and the node's stable_after: short, for a demo


class DemoError(Exception):
    """The demo cannot run here; the message says what to install or free."""


@dataclass(frozen=True)
class DemoStudy:
    """One study the demo sends, and what a newcomer should expect of it."""

    label: str
    write: Callable[[Path], list[Path]]


def _real_chest_cr(folder: Path) -> list[Path]:
    """pydicom-data's real chest PA CR (a de-identified patient), with fresh UIDs."""
    source = get_testdata_file("RG1_UNCR.dcm", download=False)
    if source is None:
        raise DemoError("pydicom-data is not installed (make install installs it)")
    ds = dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.AccessionNumber = "DEMO-REAL-CR", "DEMOCR1"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "RG1_UNCR.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path]


def _phantom(writer: Callable[..., list[Path]], seed: int, finding: bool, patient: str) -> Callable[[Path], list[Path]]:
    return lambda folder: writer(folder, seed, finding, patient_id=patient, study_instance_uid=generate_uid())


# Seeds the shipped demo models get right with a wide margin (tests/e2e/test_demo_models.py).
STUDIES = (
    DemoStudy("real chest radiograph (pydicom-data RG1)", _real_chest_cr),
    DemoStudy("chest phantom, no finding", _phantom(phantom_dicom.write_chest_cr_study, 106, False, "DEMO-CHEST")),
    DemoStudy("mammography phantom with a mass", _phantom(phantom_dicom.write_mammography_study, 11, True, "DEMO-MG")),
    DemoStudy("brain MR phantom with a mass", _phantom(phantom_dicom.write_brain_mr_study, 5, True, "DEMO-MR")),
    DemoStudy("head CT phantom with a haemorrhage", _phantom(phantom_dicom.write_ct_volume_study, 2, True, "DEMO-CT")),
    DemoStudy("colonoscopy phantom with a polyp", _phantom(phantom_dicom.write_endoscopy_study, 7, True, "DEMO-ES")),
)


def check_prerequisites() -> None:
    """Orthanc and its plugins come from Debian; say how to get them instead of failing later."""
    missing = [path for path in (ORTHANC_BINARY, "/usr/share/orthanc/plugins/libOrthancPython.so")
               if not Path(path).exists()]
    if missing:
        raise DemoError(f"{', '.join(missing)} not found: install Orthanc first "
                        "(sudo apt-get install orthanc orthanc-python orthanc-dicomweb dcmtk)")


class NodeProcess:
    """`dicom-ai serve` for the demo, configured through the environment as an admin would."""

    def __init__(self, home: Path, port: int, http_port: int, orthanc: OrthancServer) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / "dicom-ai.log"
        env = {**os.environ, "DICOM_AI_HOME": str(home), "DICOM_AI_HOST": "127.0.0.1", "DICOM_AI_PORT": str(port),
               "DICOM_AI_PACS": f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
               "DICOM_AI_ORTHANC_URL": orthanc.http_url, "DICOM_AI_MWL_DIR": str(orthanc.worklist_dir),
               "DICOM_AI_HTTP_PORT": str(http_port), "DICOM_AI_STABLE_AFTER": str(STABLE_S),
               "DICOM_AI_ALLOWED_CALLING_AETS": orthanc.aet}
        # The console asks everyone to sign in: the demo makes an admin with a fresh password it prints.
        self.console_user, self.console_password = "demo", secrets.token_urlsafe(12)
        database = Database(home / "dicom-ai.sqlite")
        try:
            Accounts(database).add_user(self.console_user, Role.ADMIN, self.console_password, by="dicom-ai demo")
        finally:
            database.close()
        self._log = open(self.log_path, "wb")
        cli = Path(sys.executable).with_name("dicom-ai")
        self.process = subprocess.Popen([str(cli), "serve"], env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while b"dicom-ai ready" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise DemoError(f"the node did not start; its log ({self.log_path}) ends:\n"
                                f"{self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


def _port(preferred: int) -> int:
    """The usual port when it is free (URLs a newcomer may know), else any free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def _metadata(orthanc: OrthancServer, study_uid: str) -> dict[str, str] | None:
    """The node's flags on a study in Orthanc, once its SR is there too (None until then)."""
    orthanc_id = orthanc.find_study(study_uid)
    if orthanc_id is None:
        return None
    names = orthanc.get_json(f"/studies/{orthanc_id}/metadata")
    if "AiPriority" not in names:
        return None
    modalities = {s["MainDicomTags"].get("Modality") for s in orthanc.get_json(f"/studies/{orthanc_id}/series")}
    if "SR" not in modalities:
        return None
    return {name: orthanc.rest("GET", f"/studies/{orthanc_id}/metadata/{name}").decode()
            for name in names if name.startswith("Ai")}


def run_demo(home: Path, out: Callable[[str], None], exit_when_done: bool = False) -> int:
    """Run the demo; returns 0 once every study's results are back (and, unless exit_when_done, after Ctrl-C)."""
    check_prerequisites()
    shutil.rmtree(home, ignore_errors=True)  # demo data only: a fresh start each time
    node_port, http_port = _port(11112), _port(8089)
    orthanc = OrthancServer(home / "orthanc", router_aet=NODE_AET, router_port=node_port, stable_age=STABLE_S)
    orthanc.http_port, orthanc.dicom_port = _port(8042), _port(4242)  # Orthanc's usual ports when free
    out("starting Orthanc (the PACS) ...")
    orthanc.start()
    node: NodeProcess | None = None
    try:
        out("starting the node (loading models) ...")
        node = NodeProcess(home / "node", node_port, http_port, orthanc)
        sent: dict[str, str] = {}
        for number, study in enumerate(STUDIES, 1):
            files = study.write(home / "studies" / str(number))
            outcome = send_files("MODALITY", Peer(aet=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port), files)
            failed = {path: error for path, error in outcome.items() if error}
            if failed:
                raise DemoError(f"Orthanc refused {study.label}: {failed}")
            sent[str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)] = study.label
            out(f"sent {study.label} ({len(files)} image(s)) to Orthanc")
        out("waiting for Orthanc to forward each study and for the node's results to come back ...")
        results = _wait_for_results(orthanc, sent)
        _summary(orthanc, node, http_port, sent, results, out)
        if not exit_when_done:
            out("\nPress Ctrl-C to stop Orthanc and the node.")
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
        return 0
    finally:
        if node is not None:
            node.stop()
        orthanc.stop()
        out("stopped")


def _wait_for_results(orthanc: OrthancServer, sent: dict[str, str]) -> dict[str, dict[str, str]]:
    results: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + RESULTS_TIMEOUT
    while len(results) < len(sent):
        for study_uid in sent:
            if study_uid not in results and (found := _metadata(orthanc, study_uid)) is not None:
                results[study_uid] = found
        if time.monotonic() > deadline:
            waiting = [label for uid, label in sent.items() if uid not in results]
            raise DemoError(f"no results after {RESULTS_TIMEOUT:.0f} s for: {', '.join(waiting)} "
                            "(see the node's log under the demo folder)")
        time.sleep(0.5)
    return results


def _summary(orthanc: OrthancServer, node: NodeProcess, http_port: int, sent: dict[str, str],
             results: dict[str, dict[str, str]], out: Callable[[str], None]) -> None:
    node_url = f"http://127.0.0.1:{http_port}/"
    login = base64.b64encode(f"{node.console_user}:{node.console_password}".encode()).decode()
    request = urllib.request.Request(node_url + "api/worklist", headers={"Authorization": f"Basic {login}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        worklist: list[dict[str, Any]] = json.loads(answer.read())
    out("\nResults are back. Where to look:")
    out(f"  Orthanc Explorer (each study now holds an AI SR and heatmaps): {orthanc.http_url}/app/explorer.html")
    out(f"  Orthanc's AI reading worklist:                                 {orthanc.http_url}/dicom-ai/worklist.html")
    out(f"  the node's console (user {node.console_user}, password {node.console_password}): {node_url}worklist")
    out("\nReading order (most urgent first), as the node's worklist gives it:")
    for rank, entry in enumerate((e for e in worklist if e["study_instance_uid"] in sent), 1):
        flags = results[entry["study_instance_uid"]]
        out(f"  {rank}. {entry['priority']:<8} {sent[entry['study_instance_uid']]}: {flags.get('AiFindings', '')}")
        out(f"     why: {'; '.join(entry['reasons'])}")
    out("\nDemo models trained on synthetic phantoms: NOT FOR CLINICAL USE.")
