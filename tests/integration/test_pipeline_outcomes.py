"""How a study ends when things go wrong, and what its results say when the study changed after they
went out: never stuck in processing, one readable line on the study, successors that name their
predecessors."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.config import Settings
from dicom_ai.domain import StudyState
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.pipeline import Pipeline
from dicom_ai.receive.keep import read_identity
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Spool, Stores
from dicom_ai.domain import ReceivedInstance
from dicom_ai.train.phantom_dicom import write_brain_mr_study
from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[2]
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@dataclass
class Bench:
    store: Stores
    spool: Spool
    pipeline: Pipeline
    files: list[Path]

    def receive(self, path: Path) -> None:
        """What the SCP does with a received file: a copy under a fresh spool name, then the record."""
        identity = read_identity(path, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID), "TEST",
                                 "1.2.840.10008.1.2.1")
        final = self.spool.free_instance_path(identity.study_instance_uid, identity.series_instance_uid,
                                              identity.sop_instance_uid)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, final)
        recorded = self.store.studies.record_instance(ReceivedInstance(**{**identity.__dict__, "path": final,
                                                                  "size": final.stat().st_size}))
        if recorded.replaced is not None:
            self.spool.remove_files([recorded.replaced])

    def process(self) -> str:
        self.store.studies.complete_quiet_studies(time.time() + 10)
        study_uid = self.pipeline.process_next()
        assert study_uid is not None
        return study_uid

    def state(self, study_uid: str) -> str:
        [row] = self.store.reports.studies(study_uid=study_uid)
        return row.state

    def pretend_the_pacs_took_everything(self) -> None:
        for item in self.store.outbox.due_outbox():
            self.store.outbox.mark_sent(item)

    def srs(self, study_uid: str) -> list[Path]:
        return sorted(p for p in (self.spool.results / study_uid).glob("*.dcm") if dcmread(p).Modality == "SR")


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    settings = Settings(home=tmp_path / "home", stable_after=1.0, pacs="PACS@127.0.0.1:104", heatmaps="none")
    store, spool = Stores.open(settings.database_path), Spool(settings.spool_dir)
    registry = ModelRegistry(REPO / "models")
    pipeline = Pipeline(store.studies, spool, RuleWatcher(REPO / "rules", known_models=registry.names()), registry, settings)
    files = write_brain_mr_study(tmp_path / "mr", seed=3, finding=True, slices=3, size=(96, 96))
    yield Bench(store, spool, pipeline, files)
    store.close()


@pytest.mark.parametrize("what_fails", ["saving the outcome", "the model, then recording the failure"])
def test_a_database_that_fails_at_the_end_leaves_no_stuck_study(
        bench: Bench, monkeypatch: pytest.MonkeyPatch, what_fails: str) -> None:
    for path in bench.files:
        bench.receive(path)

    def disk_full(*_args: object, **_kwargs: object) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    def model_fails(*_args: object, **_kwargs: object) -> None:
        raise ValueError("cannot read slice 2")

    if what_fails == "saving the outcome":
        monkeypatch.setattr(bench.store.studies, "save_outcome", disk_full)
    else:
        monkeypatch.setattr(bench.pipeline.models.get("brain-mr-demo"), "predict", model_fails)
    monkeypatch.setattr(bench.store.studies, "finish_without_results", disk_full)  # recording a failure fails too
    study_uid = bench.process()  # nothing escapes to the scheduler
    assert bench.state(study_uid) == StudyState.PROCESSING and study_uid in bench.pipeline.deferred
    monkeypatch.undo()  # the disk has room again
    assert bench.pipeline.release_deferred(now=time.time()) == []  # not before its wait is over
    assert bench.pipeline.release_deferred(now=time.time() + 60) == [study_uid]
    assert bench.state(study_uid) == StudyState.COMPLETE
    assert bench.pipeline.process_next() == study_uid
    assert bench.state(study_uid) == StudyState.DONE


def test_a_failure_is_stored_as_one_line_and_the_traceback_goes_to_the_log(
        bench: Bench, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for path in bench.files:
        bench.receive(path)
    model = bench.pipeline.models.get("brain-mr-demo")

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OSError("reader failed on slice 2\nTraceback (most recent call last):\n  File \"loader.py\", line 9, "
                      "in read\n    raise ValueError('bad')\nValueError: unsupported bits allocated 13")

    monkeypatch.setattr(model, "predict", broken)
    study_uid = bench.process()
    [row] = bench.store.reports.studies(study_uid=study_uid)
    assert row.state == StudyState.FAILED
    assert "\n" not in row.error and "Traceback" not in row.error and 'File "' not in row.error
    assert "reader failed on slice 2" in row.error and "unsupported bits allocated 13" in row.error


def test_a_study_emptied_by_moves_ends_without_results(bench: Bench) -> None:
    bench.receive(bench.files[0])
    study_uid = str(dcmread(bench.files[0]).StudyInstanceUID)
    moved = dcmread(bench.files[0])
    moved.StudyInstanceUID = moved.StudyInstanceUID + ".9"
    path = bench.files[0].with_name("moved.dcm")
    moved.save_as(path, enforce_file_format=True)
    bench.receive(path)
    bench.store.studies.complete_quiet_studies(time.time() + 10)
    processed = {bench.pipeline.process_next(), bench.pipeline.process_next()}
    assert processed == {study_uid, moved.StudyInstanceUID}
    [row] = bench.store.reports.studies(study_uid=study_uid)
    assert row.state == StudyState.NO_MATCH and row.instance_count == 0


def test_results_on_a_changed_study_supersede_the_earlier_ones_and_say_so(bench: Bench) -> None:
    for path in bench.files[:2]:
        bench.receive(path)
    study_uid = bench.process()
    assert bench.state(study_uid) == StudyState.DONE
    [first_sr] = bench.srs(study_uid)
    bench.pretend_the_pacs_took_everything()
    first_uid = str(dcmread(first_sr).SOPInstanceUID)

    bench.receive(bench.files[2])  # the rest of the study arrives after its results went out
    bench.process()
    current = bench.store.studies.current_results(study_uid, "brain-mr-demo")
    [second] = [r for r in current if r.kind == "SR"]
    assert second.sop_instance_uid != first_uid
    successor = dcmread(bench.spool.result_path(study_uid, second.sop_instance_uid))
    [study_ref] = successor.PredecessorDocumentsSequence
    [series_ref] = study_ref.ReferencedSeriesSequence
    [sop_ref] = series_ref.ReferencedSOPSequence
    assert (sop_ref.ReferencedSOPInstanceUID, sop_ref.ReferencedSOPClassUID) == (first_uid, COMPREHENSIVE_3D_SR)
    superseded = bench.store.database.query("select superseded_by from results where sop_instance_uid = ?", [first_uid])
    assert superseded == [{"superseded_by": second.sop_instance_uid}]
    dciodvfy = require_binary("dciodvfy")
    run = subprocess.run([dciodvfy, str(bench.spool.result_path(study_uid, second.sop_instance_uid))],
                         capture_output=True, text=True, timeout=60)
    assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")], run.stderr

    # Same SOP Instance UIDs with other pixels: a new revision, new result UIDs, the old ones superseded.
    changed = dcmread(bench.files[1])
    changed.PixelData = bytes(len(changed.PixelData))
    path = bench.files[1].with_name("changed.dcm")
    changed.save_as(path, enforce_file_format=True)
    bench.pretend_the_pacs_took_everything()
    bench.receive(path)
    assert bench.store.studies.study_revision(study_uid) == 1
    bench.process()
    [third] = [r for r in bench.store.studies.current_results(study_uid, "brain-mr-demo") if r.kind == "SR"]
    assert third.sop_instance_uid not in (first_uid, second.sop_instance_uid)
    refs = dcmread(bench.spool.result_path(study_uid, third.sop_instance_uid)).PredecessorDocumentsSequence
    assert refs[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == second.sop_instance_uid


def test_superseded_results_not_yet_sent_are_not_sent(bench: Bench) -> None:
    for path in bench.files[:2]:
        bench.receive(path)
    study_uid = bench.process()
    pending = {item.key for item in bench.store.outbox.due_outbox() if item.kind == "dicom"}
    assert pending
    bench.receive(bench.files[2])
    bench.process()
    still = {item.key for item in bench.store.outbox.due_outbox() if item.kind == "dicom"}
    assert not (pending & still)  # the first run's objects will never go: the second run's replace them
    states = {row["key"]: row["state"] for row in bench.store.reports.outbox_rows(study_uid) if row["kind"] == "dicom"}
    assert {states[key] for key in pending} == {"superseded"}
    [current] = [r for r in bench.store.studies.current_results(study_uid, "brain-mr-demo") if r.kind == "SR"]
    successor = dcmread(bench.spool.result_path(study_uid, current.sop_instance_uid))
    assert "PredecessorDocumentsSequence" not in successor  # the PACS never held the first one


def test_what_each_model_saw_of_each_image_is_kept_for_drift_and_subgroups(bench: Bench) -> None:
    for path in bench.files:
        bench.receive(path)
    study_uid = bench.process()
    rows = bench.store.database.query("select * from analysed_images where study_instance_uid = ? order by sop_instance_uid",
                                      [study_uid])
    headers = {str(dcmread(p).SOPInstanceUID): dcmread(p, stop_before_pixels=True) for p in bench.files}
    assert {row["sop_instance_uid"] for row in rows} == set(headers)  # every analysed image, once
    for row in rows:
        header = headers[row["sop_instance_uid"]]
        assert row["model"] == "brain-mr-demo" and row["calling_aet"] == "TEST"
        assert (row["manufacturer"], row["modality"], row["photometric"], row["body_part"]) == (
            header.Manufacturer, "MR", "MONOCHROME2", "HEAD")
        assert (row["rows"], row["columns"], row["field_strength"]) == (96, 96, 1.5)
        assert row["pixel_spacing"] == pytest.approx(float(header.PixelSpacing[0]))
        assert row["patient_sex"] == header.PatientSex and row["patient_age"] == pytest.approx(54.04, abs=0.01)


def test_a_model_switched_off_in_the_console_is_not_run_and_the_study_says_so(bench: Bench) -> None:
    from dicom_ai.store.model_switches import ModelSwitches

    switches = ModelSwitches(bench.store.database)
    assert switches.set_enabled("brain-mr-demo", False, by="ada")
    for path in bench.files:
        bench.receive(path)
    study_uid = bench.process()
    [row] = bench.store.reports.studies(study_uid=study_uid)
    assert row.state == StudyState.NO_MATCH and bench.srs(study_uid) == []
    [event] = [e for e in bench.store.reports.events(study_uid) if e["kind"] == "study_no_match"]
    assert "brain-mr-demo not run: switched off in the console" in event["detail"]
    assert switches.set_enabled("brain-mr-demo", True, by="ada")  # on again: a retry runs it, no restart
    assert bench.store.studies.requeue(study_uid, by="ada")
    assert bench.process() == study_uid and bench.state(study_uid) == StudyState.DONE and bench.srs(study_uid)
