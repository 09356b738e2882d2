"""The modality gate holds whatever the rules say: a rule that sends a CT to the chest radiograph
model gets a logged refusal and no result, never a score; the same study routed to the head CT
model is read as a volume and gets its SR."""

from __future__ import annotations

import logging
import time
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
from dicom_ai.train.phantom_dicom import write_ct_volume_study

REPO = Path(__file__).resolve().parents[2]
MISROUTING_RULE = """\
rules:
  - name: ct-to-chest
    series:
      Modality: CT
    models: [{model}]
"""


def _run(tmp_path: Path, model: str) -> tuple[Stores, str]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "misrouted.yaml").write_text(MISROUTING_RULE.format(model=model))
    settings = Settings(home=tmp_path / "home", port=11112, stable_after=1.0)
    store, spool = Stores.open(settings.database_path), Spool(settings.spool_dir)
    registry = ModelRegistry(REPO / "models")
    pipeline = Pipeline(store.studies, spool, RuleWatcher(rules, known_models=registry.names()), registry, settings)
    files = write_ct_volume_study(tmp_path / "ct", seed=5, finding=True, shape=(8, 64, 64))
    for path in files:
        identity = read_identity(path, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID), "TEST",
                                 "1.2.840.10008.1.2.1")
        store.studies.record_instance(ReceivedInstance(**{**identity.__dict__, "size": path.stat().st_size}))
    store.studies.complete_quiet_studies(time.time() + 2)
    study_uid = pipeline.process_next()
    assert study_uid is not None
    return store, study_uid


def test_chest_model_refuses_a_ct_that_a_rule_sends_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        store, study_uid = _run(tmp_path, "chest-xray-demo")
    try:
        [row] = store.reports.studies(study_uid=study_uid)
        assert row.state == StudyState.NO_MATCH
        assert "Modality CT is not accepted by chest-xray-demo (accepts CR, DX)" in caplog.text
        assert store.reports.outbox_rows(study_uid) == []
    finally:
        store.close()


def test_head_ct_model_reads_the_same_series_as_a_volume(tmp_path: Path) -> None:
    store, study_uid = _run(tmp_path, "ct-head-demo")
    try:
        [row] = store.reports.studies(study_uid=study_uid)
        assert row.state == StudyState.DONE and row.models == ("ct-head-demo@1.0.0",)
    finally:
        store.close()
