"""Results that go by STOW-RS only (stow_url, no pacs) are queued by the pipeline, and a study that changes
afterwards treats them as the C-STORE ones: unsent ones superseded, sent ones named as predecessors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.config import Settings
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.pipeline import Pipeline
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Spool, Stores
from dicom_ai.train.phantom_dicom import write_brain_mr_study
from tests.integration.test_pipeline_outcomes import REPO, Bench

STOW_URL = "http://127.0.0.1:1/dicom-web"


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    settings = Settings(home=tmp_path / "home", stable_after=1.0, stow_url=STOW_URL, heatmaps="none")
    store, spool = Stores.open(settings.database_path), Spool(settings.spool_dir)
    registry = ModelRegistry(REPO / "models")
    pipeline = Pipeline(store.studies, spool, RuleWatcher(REPO / "rules", known_models=registry.names()), registry, settings)
    files = write_brain_mr_study(tmp_path / "mr", seed=3, finding=True, slices=3, size=(96, 96))
    yield Bench(store, spool, pipeline, files)
    store.close()


def _result_sends(bench: Bench, study_uid: str) -> dict[str, tuple[str, str]]:
    return {str(row["key"]): (str(row["kind"]), str(row["state"])) for row in bench.store.reports.outbox_rows(study_uid)
            if row["key"] != study_uid}


def test_results_go_by_stow_and_unsent_ones_are_superseded(bench: Bench) -> None:
    for path in bench.files[:2]:
        bench.receive(path)
    study_uid = bench.process()
    first = _result_sends(bench, study_uid)
    assert first and {kind for kind, _ in first.values()} == {"stow"}  # no pacs: STOW only
    assert {row["destination"] for row in bench.store.reports.outbox_rows(study_uid) if row["kind"] == "stow"} == {STOW_URL}
    bench.receive(bench.files[2])
    bench.process()
    assert {_result_sends(bench, study_uid)[key] for key in first} == {("stow", "superseded")}


def test_results_the_archive_took_by_stow_are_named_as_predecessors(bench: Bench) -> None:
    for path in bench.files[:2]:
        bench.receive(path)
    study_uid = bench.process()
    [first_sr] = bench.srs(study_uid)
    bench.pretend_the_pacs_took_everything()  # the DICOMweb archive acknowledged every STOW
    bench.receive(bench.files[2])
    bench.process()
    [current] = [r for r in bench.store.studies.current_results(study_uid, "brain-mr-demo") if r.kind == "SR"]
    successor = dcmread(bench.spool.result_path(study_uid, current.sop_instance_uid))
    [study_ref] = successor.PredecessorDocumentsSequence
    assert study_ref.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        str(dcmread(first_sr).SOPInstanceUID)
