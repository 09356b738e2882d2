"""Every real DICOM file the installed packages ship (pydicom's test files, pydicom-data), each as its
own study, routed by a catch-all rule to every demo model: each study ends done,
no_match or failed with a message naming the file, never 'failed unexpectedly' (a bug) and never
stuck; every result passes dciodvfy without errors.

Every file gets an outcome, counted by source package, and the counts are asserted: a change that
silently drops files (an import that stops working, a reader that refuses more) fails here.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import data_store  # pydicom-data's import name: the real CR, J2K, JPEG-LS, US... files
import pydicom
import pytest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_ai.config import Settings
from dicom_ai.domain import StudyState
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.pipeline import Pipeline
from dicom_ai.receive.keep import StoreRejected, read_identity
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Spool, Stores
from dicom_ai.domain import ReceivedInstance
from tests.conftest import copy_as_new_study, require_binary
from tests.odd_headers import everything, stored

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CATCH_ALL = """\
rules:
  - name: everything
    series:
      SOPClassUID: {regex: '.*'}
    models: [chest-xray-demo, brain-mr-demo, ct-head-demo, mammography-demo, endoscopy-demo]
"""
SOURCES = {
    "pydicom": Path(pydicom.__file__).parent / "data" / "test_files",
    "pydicom-data": Path(data_store.__file__).parent / "data",
}
# Outcomes of a file: not a storable dataset (not DICOM, or no SOP Class/Instance UID to C-STORE it with),
# not writable (broken beyond what pydicom writes back: no sender could send it), refused by the
# SCP's checks (a DICOM status; tested in tests/receive), or processed into a final study state.
NOT_DICOM, UNWRITABLE, REFUSED = "not a storable dataset", "not writable", "refused at the door"
FINAL = (StudyState.DONE, StudyState.NO_MATCH, StudyState.FAILED)
# What the installed, pinned packages hold today (pydicom 3.0, pydicom-data 1.0); lower bounds so a
# newer package with more files still passes, but a change that loses files or results fails.
MIN_FILES = {"pydicom": 150, "pydicom-data": 68}
MIN_PROCESSED = {"pydicom": 120, "pydicom-data": 60}
MIN_DONE = {"pydicom": 20, "pydicom-data": 15}


@dataclass(frozen=True)
class FileOutcome:
    package: str
    source: Path
    outcome: str
    detail: str = ""


def installed_files() -> list[tuple[str, Path]]:
    found = []
    for package, folder in SOURCES.items():
        assert folder.is_dir(), f"{package} is installed but has no data folder {folder}"
        found += [(package, p) for p in sorted(folder.rglob("*"))
                  if p.is_file() and p.suffix.lower() in (".dcm", "") and p.stat().st_size > 0]
    return found


def as_received(source: Path, target: Path) -> Path:
    """The file as our SCP would store it once a sender sent it: fresh UIDs (each file its own study,
    as several test files share UIDs), and a File Meta header built from the dataset where the file
    has none or a broken one (senders such as dcmtk's storescu read files without one too)."""
    dataset = dcmread(source, force=True)
    if not dataset.get("SOPClassUID") or not dataset.get("SOPInstanceUID"):
        raise ValueError("no SOP Class UID or SOP Instance UID")
    dataset.ensure_file_meta()
    if not dataset.file_meta.get("TransferSyntaxUID"):  # the syntax the dataset was read in
        implicit, little = dataset.original_encoding
        dataset.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                               ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    target.mkdir(parents=True, exist_ok=True)
    fresh = target / "fresh.dcm"
    dataset.save_as(fresh, enforce_file_format=True)
    return copy_as_new_study(fresh, target)


def _why(exc: Exception) -> str:
    return f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]})"


def dciodvfy_errors(binary: str, path: Path) -> list[str]:
    run = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def summary(outcomes: list[FileOutcome]) -> str:
    table = Counter((o.package, o.outcome) for o in outcomes)
    lines = [f"{len(outcomes)} real files:"]
    for package in SOURCES:
        counts = ", ".join(f"{n} {outcome}" for (p, outcome), n in sorted(table.items()) if p == package)
        lines.append(f"  {package}: {sum(n for (p, _), n in table.items() if p == package)} files: {counts}")
    lines += [f"  {o.package} {o.source.name}: {o.outcome} {o.detail}".rstrip() for o in outcomes
              if o.outcome != StudyState.DONE]
    return "\n".join(lines)


def test_every_installed_real_file_gets_a_clear_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "all.yaml").write_text(CATCH_ALL)
    settings = Settings(home=tmp_path / "home", stable_after=1.0)
    store, spool = Stores.open(settings.database_path), Spool(settings.spool_dir)
    registry = ModelRegistry(REPO / "models")
    pipeline = Pipeline(store.studies, spool, RuleWatcher(rules, known_models=registry.names()), registry, settings)
    outcomes: list[FileOutcome] = []
    files = installed_files()
    with caplog.at_level(logging.INFO), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for package, source in files:
            try:
                path = as_received(source, tmp_path / "in")
            except (InvalidDicomError, ValueError, AttributeError) as exc:
                outcomes.append(FileOutcome(package, source, NOT_DICOM, _why(exc)))
                continue
            except Exception as exc:  # noqa: BLE001: pydicom cannot write it back, so no sender could send it
                outcomes.append(FileOutcome(package, source, UNWRITABLE, _why(exc)))
                continue
            header = dcmread(path, stop_before_pixels=True)
            try:
                identity = read_identity(path, str(header.SOPInstanceUID), "TEST",
                                         str(header.file_meta.TransferSyntaxUID))
            except StoreRejected as exc:  # refused at the door, with a DICOM status (tests/receive)
                outcomes.append(FileOutcome(package, source, REFUSED, str(exc)))
                continue
            store.studies.record_instance(ReceivedInstance(**{**identity.__dict__, "size": path.stat().st_size}))
            store.studies.complete_quiet_studies(time.time() + 5)
            study_uid = pipeline.process_next()
            assert study_uid is not None, f"{source}: the study was never processed"
            [row] = store.reports.studies(study_uid=study_uid)
            assert row.state in FINAL, f"{source}: left {row.state}"
            if row.state == StudyState.FAILED:
                assert str(path) in (row.error or ""), f"{source}: {row.error}"  # names the file
            outcomes.append(FileOutcome(package, source, row.state, row.error or ""))
    report = summary(outcomes)
    log.info("%s", report)
    with capsys.disabled():
        print(f"\n{report}")  # noqa: T201: the per-file outcome table is this test's report
    assert "failed unexpectedly" not in caplog.text
    assert len(outcomes) == len(files)  # every file has exactly one outcome
    by_package = Counter(o.package for o in outcomes)
    processed = Counter(o.package for o in outcomes if o.outcome in FINAL)
    done = Counter(o.package for o in outcomes if o.outcome == StudyState.DONE)
    for package in SOURCES:
        assert by_package[package] >= MIN_FILES[package], report
        assert processed[package] >= MIN_PROCESSED[package], report
        assert done[package] >= MIN_DONE[package], report
    results = sorted(spool.results.rglob("*.dcm"))
    assert len(results) >= 2 * sum(done.values())  # an SR and at least one SC per done study
    dciodvfy = require_binary("dciodvfy")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        errors = dict(zip(results, pool.map(lambda p: dciodvfy_errors(dciodvfy, p), results), strict=True))
    bad = {path.name: found for path, found in errors.items() if found}
    assert not bad, bad
    store.close()


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG3_J2KR.dcm", "MR2_J2KI.dcm"])
def test_de_identified_real_images_are_done(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real radiographs and MR as a de-identifying or minimal sender sends them: no birth date, sex,
    accession, study ID or time, an empty name, a malformed study date; results made and valid."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "all.yaml").write_text(CATCH_ALL)
    settings = Settings(home=tmp_path / "home", stable_after=1.0)
    store, spool = Stores.open(settings.database_path), Spool(settings.spool_dir)
    registry = ModelRegistry(REPO / "models")
    pipeline = Pipeline(store.studies, spool, RuleWatcher(rules, known_models=registry.names()), registry, settings)
    path = copy_as_new_study(SOURCES["pydicom-data"] / name, tmp_path / "in")
    header = stored(everything, dcmread(path), path)
    identity = read_identity(path, str(header.SOPInstanceUID), "TEST", str(header.file_meta.TransferSyntaxUID))
    store.studies.record_instance(ReceivedInstance(**{**identity.__dict__, "size": path.stat().st_size}))
    store.studies.complete_quiet_studies(time.time() + 5)
    with caplog.at_level(logging.WARNING):
        study_uid = pipeline.process_next()
    [row] = store.reports.studies(study_uid=study_uid)
    assert row.state == StudyState.DONE, row.error
    assert f"{path}: (0008,0020) StudyDate" in caplog.text  # the emptied date is logged with file and tag
    results = sorted(spool.results.rglob("*.dcm"))
    assert len(results) >= 2
    binary = require_binary("dciodvfy")
    assert not {p.name: e for p in results if (e := dciodvfy_errors(binary, p))}
    store.close()
