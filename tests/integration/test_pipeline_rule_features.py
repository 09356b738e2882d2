"""Rule features through the real pipeline and a real model: shadow rules record but send nothing, a
fallback rule catches an otherwise unrouted study, a closed time window makes the study wait."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_ai.config import Settings
from dicom_ai.domain import ReceivedInstance, StudyState
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.pipeline import Pipeline
from dicom_ai.receive.keep import read_identity
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Spool, Stores
from dicom_ai.train.phantom_dicom import write_brain_mr_study

REPO = Path(__file__).resolve().parents[2]
MR_RULE = """  - name: {name}
    series: {{Modality: MR}}
    models: [brain-mr-demo]
"""


@dataclass
class Bench:
    store: Stores
    spool: Spool
    files: list[Path]
    make_pipeline: Callable[[str], Pipeline]

    def receive(self, complete: bool = True) -> str:
        for path in self.files:
            identity = read_identity(path, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID), "TEST",
                                     "1.2.840.10008.1.2.1")
            final = self.spool.free_instance_path(identity.study_instance_uid, identity.series_instance_uid,
                                                  identity.sop_instance_uid)
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, final)
            self.store.studies.record_instance(ReceivedInstance(**{**identity.__dict__, "path": final,
                                                                   "size": final.stat().st_size}))
        if complete:
            self.store.studies.complete_quiet_studies(time.time() + 10)
        return identity.study_instance_uid

    def row(self, study_uid: str):  # type: ignore[no-untyped-def]
        [row] = self.store.reports.studies(study_uid=study_uid)
        return row

    def events(self, study_uid: str) -> dict[str, dict[str, object]]:
        return {e["kind"]: json.loads(e["detail"]) for e in self.store.reports.events(study_uid)}


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    settings = Settings(home=tmp_path / "home", stable_after=1.0, pacs="PACS@127.0.0.1:104", heatmaps="none",
                        orthanc_url="http://127.0.0.1:8042")
    store, spool = Stores.open(settings.database_path), Spool(settings.spool_dir)
    registry = ModelRegistry(REPO / "models")

    def make_pipeline(rules: str) -> Pipeline:
        folder = tmp_path / f"rules-{len(list(tmp_path.glob('rules-*')))}"
        folder.mkdir()
        (folder / "rules.yaml").write_text("rules:\n" + rules, encoding="utf-8")
        return Pipeline(store.studies, spool, RuleWatcher(folder, known_models=registry.names()), registry, settings)

    files = write_brain_mr_study(tmp_path / "mr", seed=3, finding=True, slices=3, size=(96, 96))
    yield Bench(store, spool, files, make_pipeline)
    store.close()


def test_a_shadow_rule_records_results_and_sends_nothing(bench: Bench) -> None:
    pipeline = bench.make_pipeline(MR_RULE.format(name="try-mr") + "    shadow: true\n")
    study_uid = bench.receive()
    assert pipeline.process_next() == study_uid
    row = bench.row(study_uid)
    assert row.state == StudyState.DONE
    assert len(row.models) == 1 and row.models[0].startswith("brain-mr-demo@") and row.models[0].endswith(" (shadow)")
    assert row.priority == "ROUTINE" and row.priority_reasons == ("only shadow models ran: nothing published",)
    assert row.results > 0  # the SR (and what else the model writes) is on disk and recorded
    assert bench.store.reports.findings_of(study_uid)
    assert bench.store.reports.outbox_rows(study_uid) == []  # no result to the PACS, no priority carrier
    assert bench.events(study_uid)["shadow_results"]["models"] == ["brain-mr-demo"]


def test_a_model_named_by_a_live_rule_too_is_not_shadow(bench: Bench) -> None:
    pipeline = bench.make_pipeline(MR_RULE.format(name="try-mr") + "    shadow: true\n" + MR_RULE.format(name="mr"))
    study_uid = bench.receive()
    pipeline.process_next()
    row = bench.row(study_uid)
    assert row.models and not row.models[0].endswith("(shadow)")
    kinds = {r["kind"] for r in bench.store.reports.outbox_rows(study_uid)}
    assert "dicom" in kinds and "orthanc_metadata" in kinds
    assert "shadow_results" not in bench.events(study_uid)


def test_a_fallback_rule_catches_an_otherwise_unrouted_study(bench: Bench) -> None:
    rules = """  - name: ct-only
    series: {Modality: CT}
    models: [ct-head-demo]
  - name: catch-all
    fallback: true
    models: [brain-mr-demo]
"""
    pipeline = bench.make_pipeline(rules)
    study_uid = bench.receive()
    pipeline.process_next()
    row = bench.row(study_uid)
    assert row.state == StudyState.DONE and row.models[0].startswith("brain-mr-demo@")
    assert json.loads(bench.store.database.query("select rules from studies")[0]["rules"]) == ["catch-all"]


def test_a_closed_window_makes_the_study_wait_and_it_runs_when_the_window_opens(bench: Bench) -> None:
    now = datetime.now().replace(second=0, microsecond=0)
    opens, closes = now + timedelta(hours=2), now + timedelta(hours=3)
    window = f"{opens:%H:%M}-{closes:%H:%M}"
    pipeline = bench.make_pipeline(MR_RULE.format(name="mr-at-night") + f"    window: '{window}'\n")
    study_uid = bench.receive()
    assert pipeline.process_next() == study_uid
    row = bench.row(study_uid)
    assert row.state == StudyState.WAITING and row.waiting_until == opens.timestamp()
    assert bench.events(study_uid)["waiting_for_window"]["models"] == ["brain-mr-demo"]
    assert pipeline.process_next() is None  # not picked up again while it waits
    assert bench.store.studies.release_waiting(now=opens.timestamp() - 1) == []
    assert bench.store.studies.release_waiting(now=opens.timestamp()) == [study_uid]
    pipeline.clock = lambda: opens.timestamp() + 60
    assert pipeline.process_next() == study_uid
    assert bench.row(study_uid).state == StudyState.DONE
    assert bench.row(study_uid).waiting_until is None


def test_a_rule_that_expects_one_series_completes_the_study_before_its_quiet_time(bench: Bench) -> None:
    pipeline = bench.make_pipeline(MR_RULE.format(name="mr") + "    complete: {series: 1, series_quiet: 5}\n")
    study_uid = bench.receive(complete=False)
    now = time.time()
    assert pipeline.complete_expected(now) == []  # the series is still within its series_quiet
    assert bench.row(study_uid).state == StudyState.RECEIVING
    assert pipeline.complete_expected(now + 6) == [study_uid]
    assert bench.row(study_uid).state == StudyState.COMPLETE
    assert bench.events(study_uid)["study_complete"]["reason"] == "rule mr: 1 of 1 expected series arrived"
    assert pipeline.process_next() == study_uid and bench.row(study_uid).state == StudyState.DONE


def test_max_wait_completes_a_study_whose_instances_keep_coming(bench: Bench) -> None:
    pipeline = bench.make_pipeline(MR_RULE.format(name="mr") + "    complete: {max_wait: 60}\n")
    study_uid = bench.receive(complete=False)
    now = time.time()
    assert pipeline.complete_expected(now) == []
    assert pipeline.complete_expected(now + 61) == [study_uid]


def test_without_completion_rules_receiving_studies_are_left_to_quiet_time(bench: Bench) -> None:
    pipeline = bench.make_pipeline(MR_RULE.format(name="mr"))
    study_uid = bench.receive(complete=False)
    assert pipeline.complete_expected(time.time() + 3600) == []
    assert bench.row(study_uid).state == StudyState.RECEIVING
